"""The ``symmetric`` dt predictor: makes any dt predictor time-symmetric.

An adaptive leapfrog whose dt depends on the current state alone is neither symplectic nor
time-reversible, and its energy error grows secularly over long runs. Hut, Makino & McMillan
(1995, ApJ 443, L93) restore time-reversibility by choosing dt symmetrically in the two ends of
the step,

    dt = 1/2 (tau(x_n) + tau(x_{n+1})),   x_{n+1} = step(x_n, dt),

an implicit equation solved here by ``iterations`` iterations starting from dt = tau(x_n): the
fixed-point iteration dt <- 1/2 (tau(x_n) + tau(x_{n+1}(dt))), accelerated from the second
iteration on by a secant step through the last two iterates (``solver="secant"``, the default;
``solver="fixed-point"`` is the plain iteration, see :data:`DEFAULT_ITERATIONS`). Each iteration
takes one trial step with the run's integrator (``simulate`` and ``evaluate`` bind it; elsewhere
the ``integrator`` option is used), and its force evaluations are
reported through ``pop_force_evals`` so that the runs' force-evaluation figures include them:
with the leapfrog a step costs ``1 + iterations`` force evaluations.

The scheme is time-reversible only if tau itself is even under time reversal, tau(x, v) = tau(x, -v):
flown back from x_{n+1} with every velocity reversed, the step must choose the same dt. The classical
rules are (they read positions and magnitudes; ``DtPredictor.time_even``); a learned dt that reads a
pair's radial velocity is not, and with such a tau the scheme drifts more than the plain rule (the
shipped network over 30 periods of Kepler e = 0.9: |dE/E| 3.8e-2 against 6.3e-3 alone, 1.2 % of its
steps over the gate). So a base that does not declare itself even is made even: an ``mlp`` network or
ensemble built by this wrapper's factory flies with its ``time_symmetric`` option on (one evaluation,
the smaller of its dt forward and with every velocity reversed), any other base as the smaller of its
dt for the state and for the state with every velocity reversed (two calls). With that, the same
network keeps |dE/E| at 7.7e-7 over the 30 periods. A base that reads past states (``history_len`` > 0)
has no time-reversed counterpart and is used as it is: its symmetric dt is not reversible.

Options (declared on :func:`make_symmetric`): ``base`` (a registered predictor name, default
``freefall``, or a ``DtPredictor`` object), ``iterations`` (default 2), ``solver`` (``secant`` or
``fixed-point``), ``integrator`` (default ``leapfrog``), ``checkpoint`` (a checkpoint path: its
trained predictor becomes the base), ``base_options`` (a dict of the base's options) and any other
keyword, which is passed on to the base (and checked by the base's declarations). A base flown
inside the ``feedback`` controller (``learned`` is) is made symmetric without it: a dt that follows
the run's past errors cannot be time-symmetric; and so is one flown inside an error cap (``learned``'s network
is, :mod:`plugins.error_cap`), whose estimate of the step's error depends on the direction of time::

    host.predictors.create("symmetric", base="freefall", eta=0.05)
    nbtoolkit simulate ... --predictor symmetric --predictor-option base=freefall --eta 0.05
    nbtoolkit simulate ... --predictor symmetric --predictor-option checkpoint=model.pt
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.contracts import checked_step
from nbtoolkit.errors import ConfigError
from nbtoolkit.integrator import Integrator
from nbtoolkit.options import Option, check_arguments, integer, name_or, one_of, option_table, text
from nbtoolkit.physics import time_reversed
from nbtoolkit.predictor import DtPredictor, History
from plugins.error_cap import ErrorCappedDt
from plugins.feedback import FeedbackDt

#: trial steps per step, and how their results are combined. The plain fixed-point iteration
#: dt <- 1/2 (tau(x_n) + tau(x_{n+1}(dt))) converges linearly, slowly where tau changes much over a
#: step; its leftover error is proportional to (dtau/dt)^(k+1), even under time reversal (harmless)
#: for odd k and odd (a drift) for even k. "secant" (default) takes the same trial steps and, from
#: the second on, a secant step through the last two iterates on the residual: on Kepler e = 0.9,
#: at equal force evaluations, 2 secant iterations keep |dE/E| bounded where 3 fixed-point
#: iterations drift (benchmarks/bench_longrun.py).
DEFAULT_ITERATIONS = 2
DEFAULT_SOLVER = "secant"
SOLVERS = ("fixed-point", "secant")
#: the options ``iterations`` and ``solver``, which :class:`SymmetricDt` and its factory share
ITERATIONS = Option("trial steps per step (0: the base rule as it is)", integer(0))
SOLVER = Option("how the trial steps are combined: secant-accelerated or the plain fixed-point iteration",
                one_of(*SOLVERS))


class SymmetricDt(DtPredictor):
    """dt = 1/2 (tau(x_n) + tau(x_{n+1})) for a base rule tau, by (secant-accelerated) fixed-point iteration.

    Differentiable (the trial steps keep the graph), so a trainable base can be trained inside
    the wrapper; ``history_len`` is the base's, and the trial end point sees the window shifted
    by one state, as the base will at the next step.
    """

    def __init__(self, base: DtPredictor, *, iterations: Annotated[int, ITERATIONS] = DEFAULT_ITERATIONS,
                 integrator: Integrator | None = None, base_name: str = "base",
                 solver: Annotated[str, SOLVER] = DEFAULT_SOLVER) -> None:
        super().__init__()
        if not isinstance(base, DtPredictor):
            raise ConfigError(f"symmetric: base must be a dt predictor or a registered name; got {type(base).__name__}")
        checked = check_arguments(SymmetricDt, iterations=iterations, solver=solver)
        self.base = base
        self.base_name = base_name
        self.solver = checked["solver"]
        self.iterations = checked["iterations"]
        self.history_len = int(getattr(base, "history_len", 0))
        self._default_integrator = integrator
        self._integrator: Integrator | None = None
        self._force_evals: Tensor | None = None

    @property
    def base_is_even(self) -> bool:
        """Whether tau is the base's dt itself (even under time reversal, or reading past states, which have no
        time-reversed counterpart) rather than the smaller of its dt forward and reversed."""
        return bool(getattr(self.base, "time_even", False)) or self.history_len > 0

    # -------------------------------------------------------------- run protocol (nbtoolkit.predictor)
    def bind_integrator(self, integrator: Integrator) -> None:
        """Take trial steps with the integrator of the run (called by simulate/evaluate)."""
        self._integrator = integrator

    def pop_force_evals(self) -> Tensor | None:
        """Force evaluations (B,) of the trial steps of the last call(s); resets the count."""
        count, self._force_evals = self._force_evals, None
        return count

    # -------------------------------------------------------------- the rule
    @property
    def integrator(self) -> Integrator:
        if self._integrator is None:
            if self._default_integrator is None:
                from plugins.integrators import Leapfrog

                self._default_integrator = Leapfrog()
            self._integrator = self._default_integrator
        return self._integrator

    def forward(self, state, history: History | None = None) -> Tensor:
        return self.scaled_forward(state, history, None)

    def scaled_forward(self, state, history: History | None, scale: Tensor | None) -> Tensor:
        """The symmetric dt of the base rule multiplied by ``scale`` (B,) (or 1): the scale enters
        both ends of the step, so a tuned factor (``evaluate.tune_scale``) keeps the rule symmetric."""
        def tau(s, h):
            t = self.base(s, h) if self.base_is_even else torch.minimum(self.base(s, h), self.base(time_reversed(s), h))
            return t if scale is None else scale * t

        tau0 = tau(state, history)
        if self.iterations == 0:
            return tau0
        integrator = self.integrator
        next_history = history.push(state) if history is not None else None
        dt, dt_prev, residual_prev = tau0, None, None
        for _ in range(self.iterations):
            trial = checked_step(integrator, state, dt)
            tau1 = tau(trial, next_history)
            ok = torch.isfinite(tau1) & (tau1 > 0)  # a trial step that blew up falls back to tau(x_n)
            mapped = 0.5 * (tau0 + torch.where(ok, tau1, tau0))
            residual = mapped - dt
            if self.solver == "secant" and dt_prev is not None:
                # secant step on residual(dt) = 0 through the last two iterates (same trial steps, faster convergence)
                slope = residual - residual_prev
                usable = slope.abs() > 0
                step = residual * (dt - dt_prev) / torch.where(usable, slope, torch.ones_like(slope))
                candidate = dt - step
                good = usable & torch.isfinite(candidate) & (candidate > 0.5 * mapped) & (candidate < 2 * mapped)
                mapped = torch.where(good, candidate, mapped)
            dt_prev, residual_prev, dt = dt, residual, mapped
        spent = torch.full((state.batch_size,), float(self.iterations * integrator.force_evals_per_step),
                           dtype=torch.float64)
        pending = self._force_evals  # calls not yet popped (a guard retry re-predicts) add up; another batch restarts
        self._force_evals = spent if pending is None or pending.shape != spent.shape else pending + spent
        return dt

    def extra_repr(self) -> str:
        return f"base={self.base_name}, iterations={self.iterations}, solver={self.solver}"


def make_symmetric(
    base: Annotated[str | DtPredictor, Option("the dt predictor made time-symmetric",
                                              name_or(DtPredictor, "dt predictor"))] = "freefall",
    iterations: Annotated[int, ITERATIONS] = DEFAULT_ITERATIONS,
    integrator: Annotated[str | Integrator | None, Option("integrator of the trial steps where the run binds none "
                                                          "(unset: leapfrog)", name_or(Integrator, "integrator"))] = None,
    checkpoint: Annotated[str | None, Option("a checkpoint or model file whose trained predictor becomes the base",
                                             text())] = None,
    base_options: Annotated[dict[str, Any] | None, Option("options of the base predictor (any option not declared "
                                                          "here goes to the base too)", option_table())] = None,
    solver: Annotated[str, SOLVER] = DEFAULT_SOLVER,
    **options: Any,
) -> SymmetricDt:
    """Factory of the ``symmetric`` predictor (see the module docstring for the options)."""
    from nbtoolkit.plugin_manager import get_host

    host = get_host()
    merged = dict(base_options or {})
    merged.update(options)
    if checkpoint is not None:
        if merged:
            raise ConfigError(f"symmetric: a checkpoint base takes no options; got {', '.join(sorted(merged))}")
        from nbtoolkit.training import load_predictor

        base_predictor, base_name = load_predictor(checkpoint, host=host), f"checkpoint {checkpoint}"
    elif isinstance(base, DtPredictor):
        if merged:
            raise ConfigError(f"symmetric: options {', '.join(sorted(merged))} cannot be applied to a base given as an object")
        base_predictor, base_name = base, type(base).__name__
    else:
        base_predictor, base_name = host.predictors.create(base, **merged), base
    if isinstance(base_predictor, FeedbackDt):  # a dt that follows the run's past errors cannot be time-symmetric
        base_predictor = base_predictor.base
    if isinstance(base_predictor, ErrorCappedDt):  # nor one capped by an estimate taken along the direction of time
        base_predictor = base_predictor.base
    switch = getattr(base_predictor, "set_time_symmetric", None)
    if not isinstance(base, DtPredictor) and not base_predictor.time_even and not base_predictor.history_len \
            and callable(switch):
        switch(True)  # a network of ours made even in one evaluation (an object given as the base is left as it is)
    bound = host.integrators.create(integrator) if isinstance(integrator, str) else integrator
    return SymmetricDt(base_predictor, iterations=iterations, integrator=bound, base_name=base_name, solver=solver)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("symmetric", make_symmetric)
