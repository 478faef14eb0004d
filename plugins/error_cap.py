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
rigid rotation, a light body near a binary), ``boost`` cannot reach the estimate's dt. The integrator estimates
steps of 2 h, 4 h, ... as well (h = ``boost`` x base;
:meth:`~nbtoolkit.contracts.integrator.Integrator.energy_error_coefficients`), and the estimate of a longer step
is trusted where its coefficient C stays within a factor ``tolerance`` of C(h), as it does away from a turning
point (near one, the mean of dH2/dt doubles with the step, or cancels where dH2/dt changes sign inside it and the
step's error comes from the next order). Where the raised step is *quiet* (its estimated error at most ``quiet``
times the gate: the base far too cautious, as on a rigid rotation, where dH2/dt grows from near zero and C grows
many times with the step) a C that grows is trusted too, if it grows backward in time as well (the state with its
velocities reversed, estimated only where some system needs it): the error then grows faster than the step's
cube, and solving the cube law with the largest C up to the longer step, either way, errs on the short side. A C
that grows one way only is a binary on its way in to pericentre or out of it, and steps lengthened on one of the
two ways only make its energy errors drift. Over the doublings k in a row that hold,

    dt = max(the dt above, max over k of min(2^k h, max_boost x base, raise_cap x (gate / C_worst(k))^(1 / (order + 1)))),

C_worst(k) the largest of the coefficients over the steps up to 2^k h. ``raise_cap`` is below ``cap``: the raise
lengthens steps in some phases of an orbit and not in others, and near-gate errors in some phases only bias a run's
energy.
:attr:`level_base` keeps the dt without the further raise, which a controller's level multiplies
(:mod:`plugins.feedback`): the raise and the level correct the same caution, and their product would count it
twice.

*The ceiling* (``vouch``). A controller lengthens the dt this returns where a run's errors sit under its target,
and nothing else checks the lengthened step against the estimate. :attr:`dt_ceiling` is the longest dt the
estimates vouch for: where the estimated error reaches ``vouch`` times the gate, the coefficient taken as the largest
over the estimated steps up to that dt, interpolated log-linearly between two of them (beyond the longest, that
one's), so that the error grows with dt and the ceiling is one dt. A controller keeps its lengthened dt under it.

The estimate is taken over the longest step the cap may allow (``boost`` x base), so it describes the
step taken where the base is within a few times the right dt, as a calibrated network is. It belongs
to the run's integrator, which :meth:`bind_integrator` receives when a run starts
(see :mod:`nbtoolkit.contracts.predictor`); before any run binds one, ``leapfrog``'s, the integrator
the shipped network was trained with. ``docs/models.md`` gives what ``boost`` and ``cap`` were measured
to do for the shipped network (``learned`` flies it inside this cap; its option ``error_cap``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nbtoolkit.errors import ConfigError
from nbtoolkit.integrator import Integrator
from nbtoolkit.physics import time_reversed
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState
from plugins.integrators import Leapfrog

#: the most doublings of the raised step over which the estimate may be checked
MAX_DOUBLINGS = 4


class ErrorCappedDt(DtPredictor):
    """dt = min(boost x base, cap x the dt at which the integrator's error estimate reaches ``gate``), raised further
    where the estimate holds over ``doublings`` doublings of the step (module doc). ``history_len`` is the base's."""

    def __init__(self, base: DtPredictor, *, boost: float, cap: float, gate: float, doublings: int = 0,
                 tolerance: float = 0.7, max_boost: float = 4.0, raise_cap: float | None = None,
                 quiet: float = 0.0, vouch: float | None = None) -> None:
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
        if isinstance(quiet, bool) or not (isinstance(quiet, (int, float)) and 0 <= quiet < 1):
            raise ConfigError(f"error cap: quiet must be a number in [0, 1); got {quiet!r}")
        if vouch is not None and (isinstance(vouch, bool) or not (isinstance(vouch, (int, float)) and 0 < vouch <= 1)):
            raise ConfigError(f"error cap: vouch must be a number in (0, 1] or None; got {vouch!r}")
        if max_boost < boost:
            raise ConfigError(f"error cap: max_boost must be at least boost ({boost:g}); got {max_boost!r}")
        self.base = base
        self.boost, self.cap, self.gate = float(boost), float(cap), float(gate)
        self.doublings, self.tolerance = doublings, float(tolerance)
        self.max_boost, self.raise_cap = float(max_boost), float(raise_cap)
        self.quiet = float(quiet)
        self.vouch = None if vouch is None else float(vouch)
        self.history_len = int(getattr(base, "history_len", 0))
        self.integrator: Integrator | None = None
        #: (B,) the last call's dt without the further raise: what a controller's level multiplies (plugins.feedback)
        self.level_base = None
        #: (B,) the longest dt the last call's estimates vouch for, with the further raise (plugins.feedback)
        self.dt_ceiling = None

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
        self.dt_ceiling = None
        if estimated is None:
            self.level_base = base_dt
            return base_dt
        coefficients = estimated.to(base_dt)  # (K + 1, B): C over steps of 2^k x raised
        power = float(integrator.order) + 1.0  # the estimated error is C dt^power
        exponent = 1.0 / power
        first = coefficients[0]
        known = torch.isfinite(first)
        capped = torch.minimum(raised, self.cap * (self.gate / first).pow(exponent))  # C = 0: raised
        self.level_base = torch.where(known, capped, base_dt)
        if not self.doublings:
            return self.level_base
        # the doublings in a row over which C stayed within the tolerance of its value over the raised step (where
        # that step is quiet: did not fall below it, forward in time nor backward)
        ratio = coefficients / first
        steady = (ratio >= self.tolerance) & (ratio <= 1.0 / self.tolerance)
        growing = (ratio > 1.0 / self.tolerance) & (first * raised.pow(power) <= self.quiet * self.gate)
        if bool(growing.any()):
            backward = integrator.energy_error_coefficients(time_reversed(state), raised.detach(), self.doublings)
            if backward is None:
                growing = torch.zeros_like(growing)
            else:
                backward = backward.to(base_dt)
                growing = growing & (backward >= self.tolerance * backward[0])
                coefficients = torch.where(growing, torch.maximum(coefficients, backward), coefficients)
        held = (steady | growing).to(torch.int64).cumprod(0).bool()
        doubled = raised * torch.pow(2.0, torch.arange(self.doublings + 1).to(raised)).unsqueeze(1)
        worst = coefficients.cummax(0).values  # the largest C over the steps up to 2^k x raised
        reach = torch.minimum(doubled, self.max_boost * base_dt)
        further = torch.minimum(reach, self.raise_cap * (self.gate / worst).pow(exponent))[1:]
        further = torch.where(held[1:], further, torch.zeros_like(further)).amax(0)
        if self.vouch is not None:
            vouched = self._vouched(self.vouch * self.gate, worst, doubled, power)
            self.dt_ceiling = torch.where(known, vouched, torch.full_like(base_dt, torch.inf))
        return torch.where(known, torch.maximum(capped, further), self.level_base)

    @staticmethod
    def _vouched(limit: float, worst: Tensor, doubled: Tensor, power: float) -> Tensor:
        """The longest dt (B,) the estimates vouch for: where the estimated error C(dt) dt^power reaches ``limit``,
        C(dt) the largest coefficient over the steps up to dt (``worst`` (K + 1, B) over the steps ``doubled``),
        taken between two estimated steps as its log-linear interpolation in log dt, and beyond the longest as
        that one's. The error so defined grows with dt, so the dt is unique."""
        worst = worst.clamp_min(torch.finfo(worst.dtype).tiny)
        ends = worst * doubled.pow(power)  # the error at the end of each estimated step, non-decreasing
        reached = (ends < limit).sum(0)  # how many steps' ends stay under the limit
        within_first = (limit / worst[0]).pow(1.0 / power)
        beyond_last = (limit / worst[-1]).pow(1.0 / power)
        lo, hi, start = worst[:-1], worst[1:], doubled[:-1]
        fraction = ((limit / (lo * start.pow(power))).log() / ((hi / lo).log() + power * math.log(2.0))).clamp(0.0, 1.0)
        between = start * torch.pow(2.0, fraction)  # (K, B): the dt inside each doubling
        table = torch.cat([within_first.unsqueeze(0), between, beyond_last.unsqueeze(0)])
        return table.gather(0, reached.unsqueeze(0)).squeeze(0)

    def extra_repr(self) -> str:
        return (f"boost={self.boost:g}, cap={self.cap:g}, gate={self.gate:g}, doublings={self.doublings}, "
                f"tolerance={self.tolerance:g}, max_boost={self.max_boost:g}, raise_cap={self.raise_cap:g}, "
                f"quiet={self.quiet:g}, vouch={self.vouch}")
