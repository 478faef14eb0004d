"""The ``feedback`` dt predictor: any dt predictor, raised where its own steps show headroom.

A calibrated learned dt keeps a margin under the gate everywhere, because it cannot tell a system
where the margin is needed from one where it is not: a periodic choreography looks like its chaotic
neighbours, a rigid rotation like a triple about to break up. The run can tell: every step measures
the error the gate judges. ``feedback`` multiplies its base's dt by a *level* c >= 1 set from the
errors of the last steps, the way an ODE solver's step-size controller uses its error estimate:

    dt_n = c_n * base(x_n),
    c_n  = clip(min(min over the last W steps k of  g_k (target / err_k)^(1/p),  growth * g_(n-1)), 1, max_boost),

where g_k = dt_k / base(x_k) is the level step k took (the dt it took over its base's: less than
c_k where the run capped dt at its end time or the guard halved it), err_k its gate error,
p = order + 1 of the run's integrator (a step's energy error of an order-q method scales as
dt^(q+1): 3 for ``leapfrog``) and W = ``window``. Each term of the minimum is the level at which
step k would have made ``target``; the smallest over W steps keeps the level under what the
worst recent step allows, ``growth`` bounds how fast it rises, and c stays 1 until W steps have
been observed, so a short run, or the start of one, flies its base unchanged. The level never
falls below 1: the base, with its calibrated safety, is the floor, and a step that comes near the
gate brings the level straight back to it.

What it cannot see coming is an error that jumps within one step (a close encounter that forms
in a cluster): there the base's own margin is what keeps the step under the gate, and a raised
level spends it. ``docs/models.md`` gives what this costs and gains on the benchmark systems.

The level is per system of the batch and lives for one run: it starts again at 1 when a run binds
its integrator (``simulate``, ``evaluate``; see :mod:`nbtoolkit.contracts.predictor`) and when
the batch changes size. Outside a run (a training loop that never reports its steps) it stays 1.

Options (declared on :func:`make_feedback`): ``base`` (a registered predictor name, default
``learned``, or a ``DtPredictor`` object), ``target`` (the gate error a step aims at, default half
of the default gate's 2e-4), ``window``, ``growth``, ``max_boost``, ``base_options`` and any other
keyword, which goes to the base::

    host.predictors.create("feedback")                          # the shipped model, raised where it can be
    host.predictors.create("feedback", base="freefall", eta=0.02, target=5e-5)
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
#: the gate errors of this many steps set the level, and the level stays 1 until that many were observed
DEFAULT_WINDOW = 32
#: the most the level rises from one step to the next
DEFAULT_GROWTH = 1.05
#: the largest level
DEFAULT_MAX_BOOST = 2.0
#: errors below this share of the target count as this share (an exact step would ask for an infinite level)
ERROR_FLOOR = 1e-9
TARGET = Option("the gate error per step that the level aims at (half the gate is a safe choice)", number(0.0))
WINDOW = Option("steps whose errors set the level; the level stays 1 until this many were observed",
                integer(1, 100_000))
GROWTH = Option("the most the level rises per step", number(1.0, strict=False))
MAX_BOOST = Option("the largest level: the most dt may exceed the base's", number(1.0, strict=False))


class FeedbackDt(DtPredictor):
    """dt = c x base(state), with a level c >= 1 per system set from the gate errors of the last steps
    (see the module docstring). ``history_len`` is the base's."""

    def __init__(self, base: DtPredictor, *, target: Annotated[float, TARGET] = DEFAULT_TARGET,
                 window: Annotated[int, WINDOW] = DEFAULT_WINDOW, growth: Annotated[float, GROWTH] = DEFAULT_GROWTH,
                 max_boost: Annotated[float, MAX_BOOST] = DEFAULT_MAX_BOOST, base_name: str = "base") -> None:
        super().__init__()
        if not isinstance(base, DtPredictor):
            raise ConfigError(f"feedback: base must be a dt predictor or a registered name; got {type(base).__name__}")
        checked = check_arguments(FeedbackDt, target=target, window=window, growth=growth, max_boost=max_boost)
        self.base = base
        self.base_name = base_name
        self.target, self.window = checked["target"], checked["window"]
        self.growth, self.max_boost = checked["growth"], checked["max_boost"]
        self.history_len = int(getattr(base, "history_len", 0))
        self.exponent = 3.0  # order + 1 of the run's integrator; leapfrog's until a run binds one
        self._last_base: Tensor | None = None  # (B,) the base's dt at the last call
        self._level: Tensor | None = None  # (B,) c for the next step
        self._allowed: Tensor | None = None  # (W, B) the level each of the last W steps allows
        self._observed = 0

    # -------------------------------------------------------------- run protocol (nbtoolkit.contracts.predictor)
    def bind_integrator(self, integrator: Integrator) -> None:
        """A run starts: take the error exponent from its integrator and start from level 1."""
        self.exponent = float(getattr(integrator, "order", 2)) + 1.0
        self._restart()

    def observe_step(self, dt: Tensor, error: Tensor) -> None:
        """Step n took ``dt`` (B,) and the gate measured ``error`` (B,): set the level of step n + 1."""
        if self._last_base is None or self._allowed is None or self._last_base.shape != dt.shape:
            return  # no call of this run's batch to compare with
        taken = (dt / self._last_base).to(torch.float64)  # g_n
        err = error.to(torch.float64).clamp_min(ERROR_FLOOR * self.target)
        err = torch.where(torch.isnan(err), torch.full_like(err, torch.inf), err)  # unknown: as bad as can be
        allowed = taken * (self.target / err).pow(1.0 / self.exponent)
        self._allowed = torch.cat([self._allowed[1:], allowed.unsqueeze(0)])
        self._observed += 1
        level = torch.minimum(self._allowed.amin(0), self.growth * taken).clamp(1.0, self.max_boost)
        self._level = level if self._observed >= self.window else torch.ones_like(level)

    def _restart(self) -> None:
        self._level = self._allowed = self._last_base = None
        self._observed = 0

    # -------------------------------------------------------------- the rule
    @property
    def level(self) -> Tensor | None:
        """The level c (B,) the next step takes (None before a run has observed a step)."""
        return self._level

    def forward(self, state, history: History | None = None) -> Tensor:
        base_dt = self.base(state, history)
        B = state.batch_size
        if self._allowed is None or self._allowed.shape[1] != B:  # a new run or another batch: start from level 1
            self._restart()
            self._allowed = torch.full((self.window, B), torch.inf, dtype=torch.float64, device=base_dt.device)
        self._last_base = base_dt.detach()
        return base_dt if self._level is None else self._level.to(base_dt) * base_dt

    def extra_repr(self) -> str:
        return (f"base={self.base_name}, target={self.target:g}, window={self.window}, growth={self.growth:g}, "
                f"max_boost={self.max_boost:g}")


def make_feedback(
    base: Annotated[str | DtPredictor, Option("the dt predictor whose dt is raised",
                                              name_or(DtPredictor, "dt predictor"))] = "learned",
    target: Annotated[float, TARGET] = DEFAULT_TARGET,
    window: Annotated[int, WINDOW] = DEFAULT_WINDOW,
    growth: Annotated[float, GROWTH] = DEFAULT_GROWTH,
    max_boost: Annotated[float, MAX_BOOST] = DEFAULT_MAX_BOOST,
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
    return FeedbackDt(base_predictor, target=target, window=window, growth=growth, max_boost=max_boost,
                      base_name=base_name)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("feedback", make_feedback)
