"""A dt predictor raised where the integrator's own error estimate says the step is safe, and capped where it is not.

A calibrated network keeps a margin under the gate on every state, because its error on a state it
has not seen is unknown; and where it does err, it errs by itself. The integrator knows the leading
term of the energy error of its own step: for ``leapfrog``, one step of dt changes |E| by about
C dt^3 (C from the h^2 term of its modified Hamiltonian, :mod:`nbtoolkit.shadow`). The two err in
different places. The estimate is sharp along a smooth orbit (on states of 744 unseen draws its dt at
the gate is within 10 % of the largest passing dt on 85 % of them, where the calibrated network's is
0.77 of it on the median state) but fails where the leading term vanishes (at an orbit's turning
points the step's error comes from the next order; 1 state in 200 gets a dt 2.3 times too long or
more), and there the network is right. So

    dt = min(boost * base(state), cap * (gate / C)^(1 / (order + 1))),

the base raised by ``boost`` and capped at ``cap`` times the dt whose estimated error is the gate:
each bounds the other's mistakes. With an integrator or a state that has no estimate (``yoshida4``,
an external field) the base's dt is taken as it is, not raised; where the estimate is not a finite number
(a system whose energy is 0, where a relative error has no meaning) too.

The estimate is taken over the longest step the cap may allow (``boost`` x base), so it describes the
step taken where the base is within a few times the right dt, as a calibrated network is. It belongs
to the run's integrator, which :meth:`bind_integrator` receives when a run starts
(see :mod:`nbtoolkit.contracts.predictor`); before any run binds one, ``leapfrog``'s, the integrator
the shipped network was trained with. ``docs/models.md`` gives what ``boost`` and ``cap`` were measured
to do for the shipped network (``learned`` flies it inside this cap; its option ``error_cap``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nbtoolkit.errors import ConfigError
from nbtoolkit.integrator import Integrator
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState
from plugins.integrators import Leapfrog


class ErrorCappedDt(DtPredictor):
    """dt = min(boost x base, cap x the dt at which the integrator's error estimate reaches ``gate``) (module doc).
    ``history_len`` is the base's."""

    def __init__(self, base: DtPredictor, *, boost: float, cap: float, gate: float) -> None:
        super().__init__()
        for name, value in (("boost", boost), ("cap", cap), ("gate", gate)):
            if not (isinstance(value, (int, float)) and value > 0 and value < float("inf")):
                raise ConfigError(f"error cap: {name} must be a finite number > 0; got {value!r}")
        self.base = base
        self.boost, self.cap, self.gate = float(boost), float(cap), float(gate)
        self.history_len = int(getattr(base, "history_len", 0))
        self.integrator: Integrator | None = None

    def bind_integrator(self, integrator: Integrator) -> None:
        """A run starts: estimate its integrator's step errors."""
        self.integrator = integrator

    def _integrator(self) -> Integrator:
        if self.integrator is None:
            self.integrator = Leapfrog()
        return self.integrator

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        base_dt = self.base(state, history)
        raised = self.boost * base_dt
        integrator = self._integrator()
        coefficient = integrator.energy_error_coefficient(state, raised.detach())
        if coefficient is None:
            return base_dt
        exponent = 1.0 / (float(integrator.order) + 1.0)
        coefficient = coefficient.to(base_dt)
        capped = self.cap * (self.gate / coefficient).pow(exponent)  # inf where C = 0
        return torch.where(torch.isfinite(coefficient), torch.minimum(raised, capped), base_dt)

    def extra_repr(self) -> str:
        return f"boost={self.boost:g}, cap={self.cap:g}, gate={self.gate:g}"
