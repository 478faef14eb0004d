"""The ``feedback`` dt predictor: any dt predictor, steered by the errors its own steps make.

A calibrated learned dt keeps a margin under the gate everywhere, because it cannot tell a system
where the margin is needed from one where it is not: a periodic choreography looks like its chaotic
neighbours, a rigid rotation like a triple about to break up. And a calibration made on some
systems holds on others only on average: an unseen cluster may sit just over the gate for many
steps. The run can tell both: every step measures the error the gate judges. ``feedback``
multiplies its base's dt by a *level* c set from the errors of the last steps, the way an ODE
solver's step-size controller uses its error estimate.

Step k took the level g_k = dt_k / base(x_k) and made the gate error err_k. With p = order + 1 of
the run's integrator (a step's energy error of an order-q method scales as dt^(q+1): 3 for
``leapfrog``), kappa_k = err_k / g_k^p is the error the base's own dt would have made. Over the
last L = ``memory`` steps, R_n = max kappa_k, and the level of step n + 1 is

    c_(n+1) = max((ceiling / R_n)^(1/p), min_level)                                if R_n > ceiling,
    c_(n+1) = clip(min((aim_n / R_n)^(1/p), growth * g_n), 1, max_boost)           otherwise, once n >= W,
    c_(n+1) = clip(min((target / 4 / R_n)^(1/p), growth * g_n), 1, early_boost)    otherwise, E <= n < W,

so a memory holding an error over ``ceiling`` brings dt under the base's at once, and otherwise, once
W = ``window`` steps were observed, the level rises (at most ``growth`` a step) until the worst step of
the memory would make ``aim_n``. Before the window, from E = ``early`` steps on, a run
whose errors all sit far under the target (a rigid rotation, a quiet planetary system: errors of 10^-7 to
10^-5 where the target is 10^-4) may already rise, towards a quarter of the target and at most to
``early_boost``; a step that jumps fourfold over the errors seen still makes no more than the target. Errors
at the target's level, which most runs start with, leave the level at 1 until the window.

*Foresight* (``trend``, default 1). The memory knows what has been: an error that climbs towards the gate
over a few steps (a pair closing in, an intruder arriving) crosses it before the memory has seen anything over
the ceiling. So the last step's rise is taken to go on once more,

    F_n = max(R_n, kappa_n * clip(kappa_n / kappa_(n-1), 1, 4)^trend),

and the step takes the lower of its level and the level F_n allows: until the aim has risen (the first W + T
steps, T = ``trust``), the level the rules above give with F_n in place of R_n; after, when the surprise already
sets the aim, max((2 target / F_n)^(1/p), min_level), so that it only lowers a step foreseen to pass twice the
target (the gate, with the target at half of it). The lowering lasts that one step: the next step's growth
counts from the level it would have taken without foresight (the g_n of the formulas above), so a rise that does
not go on costs one shorter step, not a climb back at ``growth`` a step. Of 744 unseen draws of the training
families flown for 256 steps, 80 had a failing step without foresight and 54 with it, and 11 against 4 failed
more than 1 % of their first 64 steps, at 0.1 % of the median time reached (``docs/models.md``).

The aim starts at ``target`` (half the gate) and moves towards
ceiling / S_n over the ``trust`` steps after the first window, where the *surprise* S_n >= 1 is the
largest ratio, over the run, of a step's kappa to the largest kappa of the memory before it: how
far the remembered worst has failed to foresee the next step. A run whose errors are steady (a
periodic orbit: S about 1.01) earns an aim near ``ceiling``; one whose errors jump (close
encounters in a cluster: S 1.3 to 2.7; an error that peaks once an orbit longer than the memory)
gets an aim at or under ``target``, from which such a jump still makes the ceiling.

The memory is long (128 steps, more than most orbits take) so that the level does not swing within
an orbit. A level that rose in the quiet part of a binary's orbit and fell after its pericentre
would take each passage in long steps going in and short ones coming out, and leapfrog's energy
errors would no longer cancel between the two halves. With the level set from the last 32 steps
alone, a lasting hard binary formed in half the runs of the cold collapse of 32 bodies (three times
the steps, |dE/E| 10x the base's at the end); with the memory, in none of twelve. A fall lasts the
memory too, so an error that peaks over the ceiling once an orbit is met at the lower level the next
time round instead of at the base's.

The base, with its calibrated safety, is what each step starts from: the level is 1 for the first
steps and wherever the errors leave no room either way. A base that raises its own dt further where it has
checked that it may (the error cap's further raise, :mod:`plugins.error_cap`) says so in ``level_base``, the
dt without that raise: the level multiplies ``level_base``, a raised dt above that product is kept while the
level is at least 1, and a level under 1 lowers ``level_base`` itself; the level's growth counts from the level
it gave, not from the raised step.

The level is per system of the batch and lives for one run: it starts again at 1 when a run binds
its integrator (``simulate``, ``evaluate``; see :mod:`nbtoolkit.contracts.predictor`) and when
the batch changes size. Outside a run (a training loop that never reports its steps) it stays 1.
``docs/models.md`` gives what it costs and gains on the benchmark systems.

Options (declared on :func:`make_feedback`): ``base`` (a registered predictor name, default
``learned``, or a ``DtPredictor`` object), ``target``, ``ceiling`` (both gate errors, defaults
1e-4 and 1.7e-4 for the default gate of 2e-4: scale both with another gate), ``window``,
``memory``, ``trust``, ``growth``, ``max_boost``, ``min_level``, ``early``, ``early_boost``, ``trend``,
``base_options`` and any other keyword, which goes to the base. A base that flies inside a controller
of its own (``learned`` does) is steered by this one instead::

    host.predictors.create("feedback", target=5e-5, ceiling=8e-5)   # the shipped network, steered lower
    host.predictors.create("feedback", base="freefall", eta=0.02, target=5e-5, ceiling=8e-5)
    nbtoolkit simulate ... --predictor feedback --predictor-option model=my-model.pt
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.integrator import Integrator
from nbtoolkit.options import Option, check_arguments, integer, name_or, number, option_table
from nbtoolkit.predictor import DtPredictor, History

#: the per-step error a step aims at: half of the default energy gate, 2e-4
DEFAULT_TARGET = 1e-4
#: the largest error the memory may hold: above it the level falls, below 1 if need be
DEFAULT_CEILING = 1.7e-4
#: the level rises only once this many steps were observed
DEFAULT_WINDOW = 32
#: the gate errors of this many steps set the level, up and down (at least the window)
DEFAULT_MEMORY = 128
#: steps, after the first window, over which the aim moves from ``target`` towards ``ceiling`` / surprise
DEFAULT_TRUST = 64
#: the most the level rises from one step to the next
DEFAULT_GROWTH = 1.05
#: the largest level. It binds only where a run's errors stay far under the aim (a rigid rotation, a 4th-order
#: integrator); 4 rather than 2 changed no step of the public list, of 31 of 33 systems outside it or of 744 unseen
#: draws, and took the collinear Euler configuration to t = 100 from 591 to 379 steps (docs/models.md)
DEFAULT_MAX_BOOST = 4.0
#: the smallest level: the most dt may fall under the base's
DEFAULT_MIN_LEVEL = 0.5
#: steps observed before a run whose errors sit far under the target may rise, before its window
DEFAULT_EARLY = 8
#: the largest level before the window
DEFAULT_EARLY_BOOST = 2.0
#: the share of the target that the level aims at before the window
EARLY_SHARE = 0.25
#: the exponent on the last step's rise of the error coefficient by which the next step's is foreseen (0: not
#: foreseen): 1 took the unseen draws with a failing step in their first 256 from 80 to 54 of 744, at 0.1 % of the
#: time reached (docs/models.md, "Foresight")
DEFAULT_TREND = 1.0
#: the largest rise from one step to the next that the foresight extrapolates
MAX_RISE = 4.0
#: once the aim has risen, foresight lowers a step only where its foreseen error is over this many times the target
#: (the gate, with the target at half of it): every rule seeing the foreseen error took the figure-eight from 387
#: to 395 steps, over the tuned rules' 394 (docs/models.md)
FORESIGHT_LIMIT = 2.0
#: errors below this share of the target count as this share (an exact step would ask for an infinite level)
ERROR_FLOOR = 1e-9
TARGET = Option("the gate error per step that the level aims at before the run has shown its errors steady "
                "(half the gate is a safe choice)", number(0.0))
CEILING = Option("the largest gate error the memory may hold: above it the level falls (below 1 if need be); "
                 "once the run has shown its errors steady, the aim rises towards it", number(0.0))
WINDOW = Option("steps observed before the level may rise (and after which the aim starts to move)",
                integer(1, 100_000))
MEMORY = Option("steps whose largest error sets the level, up and down (at least the window): a level that "
                "rose and fell within an orbit would bias the energy error", integer(1, 1_000_000))
TRUST = Option("steps, after the first window, over which the aim moves from target towards ceiling / surprise",
               integer(1, 10_000_000))
GROWTH = Option("the most the level rises per step", number(1.0, strict=False))
MAX_BOOST = Option("the largest level: the most dt may exceed the base's", number(1.0, strict=False))
MIN_LEVEL = Option("the smallest level: the most dt may fall under the base's",
                   number(0.0, high=1.0, high_strict=False))
EARLY = Option("steps observed before the level may rise towards a quarter of the target, before the window "
               "(none if at least the window)", integer(1, 100_000))
EARLY_BOOST = Option("the largest level before the window (max_boost if that is smaller)", number(1.0, strict=False))
TREND = Option("foresight: the next step's error coefficient is taken to be at least the last one's times its rise "
               "over the one before (at most 4x) to this power (0: the memory's largest alone)",
               number(0.0, strict=False))


class FeedbackDt(DtPredictor):
    """dt = c x base(state), with a level c per system set from the gate errors of the last steps
    (see the module docstring). ``history_len`` is the base's."""

    def __init__(self, base: DtPredictor, *, target: Annotated[float, TARGET] = DEFAULT_TARGET,
                 ceiling: Annotated[float, CEILING] = DEFAULT_CEILING,
                 window: Annotated[int, WINDOW] = DEFAULT_WINDOW, memory: Annotated[int, MEMORY] = DEFAULT_MEMORY,
                 trust: Annotated[int, TRUST] = DEFAULT_TRUST,
                 growth: Annotated[float, GROWTH] = DEFAULT_GROWTH,
                 max_boost: Annotated[float, MAX_BOOST] = DEFAULT_MAX_BOOST,
                 min_level: Annotated[float, MIN_LEVEL] = DEFAULT_MIN_LEVEL,
                 early: Annotated[int, EARLY] = DEFAULT_EARLY,
                 early_boost: Annotated[float, EARLY_BOOST] = DEFAULT_EARLY_BOOST,
                 trend: Annotated[float, TREND] = DEFAULT_TREND, base_name: str = "base") -> None:
        super().__init__()
        if not isinstance(base, DtPredictor):
            raise ConfigError(f"feedback: base must be a dt predictor or a registered name; got {type(base).__name__}")
        checked = check_arguments(FeedbackDt, target=target, ceiling=ceiling, window=window, memory=memory,
                                  trust=trust, growth=growth, max_boost=max_boost, min_level=min_level, early=early,
                                  early_boost=early_boost, trend=trend)
        if checked["ceiling"] < checked["target"]:
            raise ConfigError(f"feedback: option 'ceiling' ({checked['ceiling']:g}) must be >= option 'target' "
                              f"({checked['target']:g})")
        if checked["memory"] < checked["window"]:
            raise ConfigError(f"feedback: option 'memory' ({checked['memory']}) must be >= option 'window' "
                              f"({checked['window']})")
        self.base = base
        self.base_name = base_name
        self.target, self.ceiling = checked["target"], checked["ceiling"]
        self.window, self.memory, self.trust = checked["window"], checked["memory"], checked["trust"]
        self.growth, self.max_boost, self.min_level = checked["growth"], checked["max_boost"], checked["min_level"]
        self.early, self.early_boost = checked["early"], min(checked["early_boost"], checked["max_boost"])
        self.trend = checked["trend"]
        self.history_len = int(getattr(base, "history_len", 0))
        self.exponent = 3.0  # order + 1 of the run's integrator; leapfrog's until a run binds one
        self._last_base: Tensor | None = None  # (B,) the base's dt at the last call
        self._level: Tensor | None = None  # (B,) c for the next step
        self._coeff: Tensor | None = None  # (L, B) a ring of the error coefficients of the last L steps (0: none)
        self._surprise: Tensor | None = None  # (B,) the run's largest coefficient over its memory's largest
        self._cut: Tensor | float = 1.0  # (B,) how far foresight lowered the last step's level (>= 1; 1: not)
        self._observed = 0

    # -------------------------------------------------------------- run protocol (nbtoolkit.contracts.predictor)
    def bind_integrator(self, integrator: Integrator) -> None:
        """A run starts: take the error exponent from its integrator and start from level 1."""
        self.exponent = float(getattr(integrator, "order", 2)) + 1.0
        self._restart()

    def observe_step(self, dt: Tensor, error: Tensor) -> None:
        """Step n took ``dt`` (B,) and the gate measured ``error`` (B,): set the level of step n + 1."""
        if self._last_base is None or self._coeff is None or self._surprise is None \
                or self._last_base.shape != dt.shape:
            return  # no call of this run's batch to compare with
        taken = (dt / self._last_base).to(torch.float64)  # g_n
        # an unknown (NaN) error is as bad as can be
        err = error.to(torch.float64).clamp_min(ERROR_FLOOR * self.target).nan_to_num(nan=torch.inf, posinf=torch.inf)
        coeff = err / taken.pow(self.exponent)  # the error the base's own dt would have made
        if self._observed >= self.window:  # an unknown error over an unknown memory surprises as much as can be
            ratio = (coeff / self._coeff.amax(0)).nan_to_num(nan=torch.inf)
            self._surprise = torch.maximum(self._surprise, ratio)
        extrapolated: Tensor | None = None  # kappa_n times its clipped rise over kappa_(n-1) to the trend
        if self.trend > 0:  # kappa_(n-1) from the ring's slot of step n - 1 (0: none yet)
            last = self._coeff[(self._observed - 1) % self.memory]
            rise = torch.where(last > 0, coeff / last, torch.ones_like(coeff)).nan_to_num(nan=1.0)
            extrapolated = coeff * rise.clamp(1.0, MAX_RISE).pow(self.trend)
        self._coeff[self._observed % self.memory] = coeff  # the ring of the last L coefficients
        self._observed += 1
        worst = self._coeff.amax(0)  # (B,) R_n
        # the level the step would have taken without foresight; a step the base raised further than its level base
        # (plugins.error_cap) counts at the level it was given, so that the raise does not lift the level with it
        applied = taken if self._level is None else torch.minimum(taken, self._level.to(taken))
        reference = applied * self._cut
        aim, cap = self._aim()
        free = self._level_for(worst, reference, aim, cap)
        if extrapolated is not None:
            foreseen = torch.maximum(worst, extrapolated)
            if self._observed < self.window + self.trust:  # the aim has not risen: every rule sees the foreseen one
                fore = self._level_for(foreseen, reference, aim, cap)
            else:  # the surprise sets the aim: foresight keeps the foreseen error under twice the target
                fore = (FORESIGHT_LIMIT * self.target / foreseen).pow(1.0 / self.exponent).clamp_min(self.min_level)
            self._level = torch.minimum(fore, free)
        else:
            self._level = free
        self._cut = free / self._level

    def _aim(self) -> tuple[Tensor | float | None, float]:
        """(aim (B,) or a number, cap) of the level's rise at this step; aim None before ``early`` steps (no rise)."""
        if self._observed >= self.window:
            assert self._surprise is not None
            evidence = min((self._observed - self.window) / self.trust, 1.0)
            return self.target + ((self.ceiling / self._surprise).clamp(max=self.ceiling) - self.target) * evidence, \
                self.max_boost
        if self._observed >= self.early:  # only a run whose errors all sit far under the target rises yet
            return EARLY_SHARE * self.target, self.early_boost
        return None, 1.0

    def _level_for(self, worst: Tensor, reference: Tensor, aim: Tensor | float | None, cap: float) -> Tensor:
        """The level (B,) of the next step from the worst coefficient ``worst`` (B,), the level ``reference`` (B,)
        the last step would have taken without foresight (the rise is at most ``growth`` times it) and the
        :meth:`_aim` of this step."""
        if aim is None:
            level = torch.ones_like(worst)
        else:
            level = torch.minimum((aim / worst).pow(1.0 / self.exponent), self.growth * reference).clamp(1.0, cap)
        down = (self.ceiling / worst).pow(1.0 / self.exponent)
        return torch.where(down < 1.0, down.clamp_min(self.min_level), level)

    def _restart(self) -> None:
        self._level = self._coeff = self._surprise = self._last_base = None
        self._cut = 1.0
        self._observed = 0

    # -------------------------------------------------------------- the rule
    @property
    def level(self) -> Tensor | None:
        """The level c (B,) the next step takes (None before a run has observed a step)."""
        return self._level

    def forward(self, state, history: History | None = None) -> Tensor:
        proposed = self.base(state, history)
        under = self.base.level_base  # a base that raises its own dt where it has verified it
        base_dt = proposed if under is None else under
        B = state.batch_size
        if self._coeff is None or self._coeff.shape[1] != B:  # a new run or another batch: start from level 1
            self._restart()
            self._coeff = torch.zeros((self.memory, B), dtype=torch.float64, device=base_dt.device)
            self._surprise = torch.ones(B, dtype=torch.float64, device=base_dt.device)
        self._last_base = base_dt.detach()
        if self._level is None:
            return proposed
        level = self._level.to(base_dt)
        levelled = torch.where(level >= 1.0, torch.maximum(level * base_dt, proposed), level * base_dt)
        ceiling = self.base.dt_ceiling  # a base that vouches for no longer dt
        return levelled if ceiling is None else torch.minimum(levelled, torch.maximum(ceiling.to(base_dt), proposed))

    def extra_repr(self) -> str:
        return (f"base={self.base_name}, target={self.target:g}, ceiling={self.ceiling:g}, window={self.window}, "
                f"memory={self.memory}, trust={self.trust}, growth={self.growth:g}, max_boost={self.max_boost:g}, "
                f"min_level={self.min_level:g}, early={self.early}, early_boost={self.early_boost:g}, trend={self.trend:g}")


def make_feedback(
    base: Annotated[str | DtPredictor, Option("the dt predictor whose dt is raised",
                                              name_or(DtPredictor, "dt predictor"))] = "learned",
    target: Annotated[float, TARGET] = DEFAULT_TARGET,
    ceiling: Annotated[float, CEILING] = DEFAULT_CEILING,
    window: Annotated[int, WINDOW] = DEFAULT_WINDOW,
    memory: Annotated[int, MEMORY] = DEFAULT_MEMORY,
    trust: Annotated[int, TRUST] = DEFAULT_TRUST,
    growth: Annotated[float, GROWTH] = DEFAULT_GROWTH,
    max_boost: Annotated[float, MAX_BOOST] = DEFAULT_MAX_BOOST,
    min_level: Annotated[float, MIN_LEVEL] = DEFAULT_MIN_LEVEL,
    early: Annotated[int, EARLY] = DEFAULT_EARLY,
    early_boost: Annotated[float, EARLY_BOOST] = DEFAULT_EARLY_BOOST,
    trend: Annotated[float, TREND] = DEFAULT_TREND,
    base_options: Annotated[dict[str, Any] | None, Option("options of the base predictor (any option not declared "
                                                          "here goes to the base too)", option_table())] = None,
    **options: Any,
) -> FeedbackDt:
    """Factory of the ``feedback`` predictor (see the module docstring for the options)."""
    from nbtoolkit.plugin_manager import get_host

    merged = dict(base_options or {})
    merged.update(options)
    if isinstance(base, DtPredictor):
        if merged:
            raise ConfigError(f"feedback: options {', '.join(sorted(merged))} cannot be applied to a base given as an object")
        base_predictor, base_name = base, type(base).__name__
    else:
        base_predictor, base_name = get_host().predictors.create(base, **merged), base
    if isinstance(base_predictor, FeedbackDt):  # a base already steered (``learned``): steer its own base instead
        base_predictor = base_predictor.base
    return FeedbackDt(base_predictor, target=target, ceiling=ceiling, window=window, memory=memory, trust=trust,
                      growth=growth, max_boost=max_boost, min_level=min_level, early=early, early_boost=early_boost,
                      trend=trend, base_name=base_name)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("feedback", make_feedback)
