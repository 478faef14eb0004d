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

*The further raise* (``doublings`` > 0). Where the base is far more cautious than the estimate needs (a
rigid rotation, a light body near a binary), ``boost`` cannot reach the estimate's dt. The estimate can be
trusted further where it is in its asymptotic regime, which the integrator shows by estimating steps of
2 h, 4 h, ... (h = ``boost`` x base; :meth:`~nbtoolkit.contracts.integrator.Integrator.energy_error_coefficients`):
away from a turning point their coefficients barely differ from the one of h; near one, the mean of dH2/dt
doubles with the step or changes sign. Where k doublings in a row stay within a factor ``tolerance`` of C(h),

    dt = max(the dt above, min(2^k h, max_boost x base, raise_cap x (gate / C_worst)^(1 / (order + 1)))),

C_worst the largest of the k + 1 coefficients. ``raise_cap`` is below ``cap``: the raise lengthens steps in
some phases of an orbit and not in others, and near-gate errors in some phases only bias a run's energy.
:attr:`level_base` keeps the dt without the further raise, which a controller's level multiplies
(:mod:`plugins.feedback`): the raise and the level correct the same caution, and their product would count it
twice.

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

#: the most doublings of the raised step over which the estimate may be checked
MAX_DOUBLINGS = 4


class ErrorCappedDt(DtPredictor):
    """dt = min(boost x base, cap x the dt at which the integrator's error estimate reaches ``gate``), raised further
    where the estimate holds over ``doublings`` doublings of the step (module doc). ``history_len`` is the base's."""

    def __init__(self, base: DtPredictor, *, boost: float, cap: float, gate: float, doublings: int = 0,
                 tolerance: float = 0.7, max_boost: float = 4.0, raise_cap: float | None = None) -> None:
        super().__init__()
        raise_cap = cap if raise_cap is None else raise_cap
        for name, value in (("boost", boost), ("cap", cap), ("gate", gate), ("max_boost", max_boost),
                            ("raise_cap", raise_cap)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ConfigError(f"error cap: {name} must be a finite number > 0; got {value!r}")
        if isinstance(doublings, bool) or not isinstance(doublings, int) or not 0 <= doublings <= MAX_DOUBLINGS:
            raise ConfigError(f"error cap: doublings must be an integer from 0 to {MAX_DOUBLINGS}; got {doublings!r}")
        if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
            raise ConfigError(f"error cap: tolerance must be a number in (0, 1); got {tolerance!r}")
        if max_boost < boost:
            raise ConfigError(f"error cap: max_boost must be at least boost ({boost:g}); got {max_boost!r}")
        self.base = base
        self.boost, self.cap, self.gate = float(boost), float(cap), float(gate)
        self.doublings, self.tolerance = doublings, float(tolerance)
        self.max_boost, self.raise_cap = float(max_boost), float(raise_cap)
        self.history_len = int(getattr(base, "history_len", 0))
        self.integrator: Integrator | None = None
        #: (B,) the last call's dt without the further raise: what a controller's level multiplies (plugins.feedback)
        self.level_base: Tensor | None = None

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
        estimated = integrator.energy_error_coefficients(state, raised.detach(), self.doublings)
        if estimated is None:
            self.level_base = base_dt
            return base_dt
        coefficients = estimated.to(base_dt)  # (K + 1, B): C over steps of 2^k x raised
        exponent = 1.0 / (float(integrator.order) + 1.0)
        first = coefficients[0]
        known = torch.isfinite(first)
        capped = torch.minimum(raised, self.cap * (self.gate / first).pow(exponent))  # C = 0: raised
        self.level_base = torch.where(known, capped, base_dt)
        if not self.doublings:
            return self.level_base
        # how many doublings in a row kept C within the tolerance of its value over the raised step
        ratio = (coefficients / first).nan_to_num(nan=0.0)
        steady = ((ratio >= self.tolerance) & (ratio <= 1.0 / self.tolerance)).to(torch.int64).cumprod(0)
        verified = (steady.sum(0) - 1).clamp_min(0)  # (B,)
        reach = torch.minimum(raised * torch.pow(2.0, verified.to(raised)), self.max_boost * base_dt)
        rows = torch.arange(self.doublings + 1, device=verified.device).unsqueeze(1) <= verified.unsqueeze(0)
        worst = torch.where(rows, coefficients, torch.zeros_like(coefficients)).amax(0)
        further = torch.minimum(reach, self.raise_cap * (self.gate / worst).pow(exponent))
        return torch.where(known & (verified > 0), torch.maximum(capped, further), self.level_base)

    def extra_repr(self) -> str:
        return (f"boost={self.boost:g}, cap={self.cap:g}, gate={self.gate:g}, doublings={self.doublings}, "
                f"tolerance={self.tolerance:g}, max_boost={self.max_boost:g}, raise_cap={self.raise_cap:g}")
