"""Safety calibration: make a trained predictor pass the gate on a target share of steps.

A network trained to keep |dE/E| inside a band just under the gate passes it on most steps of
systems like its training set, and fails more often on systems unlike them. Calibration
measures this on *validation* systems it was not trained on and sets one factor on every dt
(the predictor's ``log_safety`` buffer) so that a target share of steps passes:

1. Roll the validation systems out unguarded with the predictor, as ``evaluate`` would.
2. At every step, try the step again with the predicted dt scaled by the factors of a log grid
   and record the largest factor s* up to which every factor passes the gate (the gate training
   used: the energy gate by default). The grid is scanned from the bottom, every
   :data:`SCAN_STRIDE`-th factor until the first failure and then the factors in between
   (:func:`max_passing_scale`), in batched steps of all systems still passing.
3. Per system, take the ``1 - target_pass_rate`` quantile of s*: with that factor the system
   would have passed ``target_pass_rate`` of its steps. The calibrated factor is the smallest of
   these over the systems (so every validation system meets the target, not just the average),
   which may be above 1 when the network is conservative everywhere (never above :data:`MAX_FACTOR`).

The predictor may hold several factors, one per class of states (``predictor.predict_with_class``
gives each state's dt and class from one evaluation; the ``mlp`` predictor classes states by their number of
bodies and the eccentricity of their closest pair). Steps 2 and 3 are then done per class:
each class takes, over the validation systems that spent at least :data:`MIN_CLASS_STEPS` steps
in it, the smallest quantile of s* over those steps; a class without such data takes the
smallest factor of the classes with the same number of bodies and of the same kind (the predictor's
``safety_kinds``: for ``mlp``, a bound or an unbound closest pair), else with the same number of
bodies, else of all classes. This is
split conformal calibration of the dt factor to a per-system pass-rate target, conditional on
the class (Mondrian conformal calibration).

The per-class target is stricter than needed: what counts is each system's pass rate over *all*
its steps, wherever they fall. So the factors are then raised jointly
(:func:`raise_within_budget`): each validation system may fail ``1 - target_pass_rate`` of its
steps in total, and the classes with the most steps are raised one grid step at a time while no
system exceeds that budget (nor the failures it already had at the per-class factors). A class
whose strict factor is set by one system that fails in a handful of its steps then no longer
costs every other system of the class. The whole is repeated up to ``rounds`` times because the
rolled-out states depend on the factors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..contracts import checked_error, checked_step
from ..errors import ConfigError
from ..gate import EnergyGate, Gate
from ..integrator import Integrator
from ..predictor import DtPredictor, History
from ..state import NBodyState
from .restart import dispersal_limit, restart_dispersed
from .steps import padding_groups

#: fewest steps a validation system must spend in a class for its quantile to count there
MIN_CLASS_STEPS = 32
#: the most a calibrated factor may make a predictor bolder than it was trained to be, over all rounds:
#: about the headroom a loss band at half the gate leaves for an error that grows as dt^2 (sqrt(2) = 1.41).
#: A class where every validation step would pass at far larger factors (the top of the grid, round after
#: round) is one the network treats as unlike its training; its few validation states say nothing
#: about the next system that lands there
MAX_FACTOR = 1.5
#: the calibration tries every SCAN_STRIDE-th factor of its grid up to a state's first failing one, then
#: those in between (:func:`max_passing_scale`): 2.7x less work than the whole grid, and the same s* on all
#: but about 0.1 % of the states of ``general`` (those with a failing pocket inside a passing range)
SCAN_STRIDE = 4
#: coarse factors tried per trial step of :func:`max_passing_scale` with a stride
SCAN_CHUNK = 4


@dataclass(frozen=True)
class CalibrationResult:
    """``factor`` (C,): the factors applied in this call per class (products over rounds);
    ``safety`` (C,): the predictor's factors now; ``per_system`` (B,): each system's quantile of s*
    in the last round; ``pass_rate``: share of validation steps of the last round's rollout whose
    s* >= 1."""

    factor: list[float]
    safety: list[float]
    per_system: Tensor
    pass_rate: float

    def as_dict(self) -> dict[str, Any]:
        """The plain values and CPU tensor stored as a checkpoint's or model file's ``calibration``."""
        return {"factor": self.factor, "safety": self.safety, "pass_rate": self.pass_rate,
                "per_system": self.per_system.cpu()}


def _passing(integrator: Integrator, state: NBodyState, trial_dt: Tensor, threshold: float,
             gate: Gate | None) -> Tensor:
    """(K, B) whether each of the K trial steps ``trial_dt`` (K, B) of every system passes ``gate``;
    one integrator step of B * K systems."""
    K, B = trial_dt.shape
    batch = NBodyState.cat([state] * K)  # system b, trial k at index k * B + b
    new = checked_step(integrator, batch, trial_dt.reshape(K * B))
    return checked_error(EnergyGate() if gate is None else gate, batch, new).reshape(K, B) <= threshold


def max_passing_scale(integrator: Integrator, state: NBodyState, dt: Tensor, scales: Tensor,
                      threshold: float, gate: Gate | None = None, stride: int = 1) -> Tensor:
    """(B,): the largest of ``scales`` (G,, ascending) up to which every ``scale * dt`` passes ``gate``
    (default: the energy gate; 0 where even the smallest fails).

    With ``stride`` 1 every scale is tried (one step of B * G systems). With ``stride`` k > 1 every
    k-th scale is tried from the smallest up, :data:`SCAN_CHUNK` at a time and only for the systems
    that have not failed yet, and then every scale between a system's last passing and first
    failing one: the same result unless a failing pocket narrower than k scales lies below a
    passing one, for about (first failing index) / k + k trial steps per system instead of G.
    """
    G, B = scales.shape[0], state.batch_size
    scales = scales.to(dt.dtype)
    if stride <= 1:
        ok = _passing(integrator, state, scales.unsqueeze(1) * dt.unsqueeze(0), threshold, gate)
        ok_prefix = torch.cumprod(ok.to(torch.int64), dim=0).bool()  # passes at every scale so far
        return torch.where(ok_prefix, scales.unsqueeze(1), torch.zeros_like(dt)).amax(0)
    coarse = torch.arange(0, G, stride)
    if int(coarse[-1]) != G - 1:
        coarse = torch.cat([coarse, torch.tensor([G - 1])])
    # the position in ``coarse`` of each system's first failing coarse scale (len(coarse): none fails)
    first_fail = torch.full((B,), len(coarse), dtype=torch.long)
    for start in range(0, len(coarse), SCAN_CHUNK):
        todo = (first_fail == len(coarse)).nonzero().flatten()
        if not len(todo):
            break
        chunk = coarse[start:start + SCAN_CHUNK]
        sub = state.index(todo)
        ok = _passing(integrator, sub, scales[chunk].unsqueeze(1) * dt[todo].unsqueeze(0), threshold, gate)
        failed = ~ok.all(0)
        first = start + (~ok).to(torch.int64).argmax(0)
        first_fail[todo[failed]] = first[failed]
    padded = torch.cat([coarse, torch.tensor([G])])
    low = torch.where(first_fail > 0, padded[(first_fail - 1).clamp_min(0)], torch.full_like(first_fail, -1))
    high = padded[first_fail]  # first failing scale index (G: none), every scale in (low, high) untried
    # refine: the scales strictly between the last passing and the first failing coarse scale
    offsets = torch.arange(1, stride)
    fine = (low.unsqueeze(0) + offsets.unsqueeze(1))  # (stride - 1, B)
    valid = fine < high.unsqueeze(0)
    best_index = low.clone()
    need = valid.any(0).nonzero().flatten()
    if len(need):
        idx = fine[:, need].clamp(0, G - 1)
        ok = _passing(integrator, state.index(need), scales[idx] * dt[need].unsqueeze(0), threshold, gate)
        ok_prefix = torch.cumprod((ok | ~valid[:, need]).to(torch.int64), dim=0).bool() & valid[:, need]
        best_index[need] = torch.where(ok_prefix, idx, low[need].unsqueeze(0)).amax(0)
    return torch.where(best_index >= 0, scales[best_index.clamp_min(0)], torch.zeros_like(dt))


def unguarded_rollout(predictor: DtPredictor, integrator: Integrator, state: NBodyState,
                      steps: int) -> Iterator[tuple[NBodyState, History | None, Tensor, Tensor, Tensor]]:
    """Fly ``state`` unguarded for ``steps`` steps with the predictor's calibrated dt, as ``simulate``
    would, the predictor reading the states it has flown as its history. Yields, before each step,
    (state, history, dt (B,), safety class (B,), alive (B,)): a system that has blown up keeps its
    last finite state with alive False, and the rollout ends early once every system has. A system
    that has dispersed (an unbound pair after its passage) starts again from its initial state, as
    in training (:func:`~nbtoolkit.training.restart.restart_dispersed`): its dt would otherwise grow
    geometrically until its energies overflow, and it passes again instead."""
    current = start = state.detach()
    limit = dispersal_limit(start)
    alive = torch.ones(state.batch_size, dtype=torch.bool)
    history_len = int(getattr(predictor, "history_len", 0))
    history = History.empty(current, history_len) if history_len else None
    for _ in range(steps):
        dt, classes = cast(Any, predictor).predict_with_class(current, history)
        yield current, history, dt, classes, alive
        new = checked_step(integrator, current, dt)
        alive = alive & torch.isfinite(new.position).flatten(1).all(-1) & torch.isfinite(new.velocity).flatten(1).all(-1)
        if not bool(alive.any()):
            return
        keep = alive.view(-1, 1, 1)
        if history is not None:
            history = history.push(current)
        current = new.replace(position=torch.where(keep, new.position, current.position),
                              velocity=torch.where(keep, new.velocity, current.velocity),
                              time=torch.where(alive, new.time, current.time))
        current, history, _ = restart_dispersed(current, start, history, limit)


def _rollout_scales(predictor: DtPredictor, integrator: Integrator, state: NBodyState, scales: Tensor,
                    threshold: float, steps: int, gate: Gate | None,
                    stride: int = SCAN_STRIDE) -> tuple[Tensor, Tensor]:
    """s* and the safety class of every step (each (steps, B)) along the :func:`unguarded_rollout`
    of ``state``; a system that blows up repeats its last step's figures."""
    found = torch.zeros(steps, state.batch_size, dtype=state.dtype)
    classes = torch.zeros(steps, state.batch_size, dtype=torch.long)
    k = 0
    for k, (current, _, dt, state_classes, alive) in enumerate(unguarded_rollout(predictor, integrator, state, steps)):
        found[k] = torch.where(alive, max_passing_scale(integrator, current, dt, scales, threshold, gate, stride),
                               found[k - 1])
        classes[k] = torch.where(alive, state_classes, classes[k - 1])
    if steps:
        found[k + 1:], classes[k + 1:] = found[k], classes[k]
    return found, classes


def class_factors(s_star: Tensor, classes: Tensor, n_classes: int, group_size: int,
                  target_pass_rate: float, kinds: Tensor | None = None) -> Tensor:
    """(n_classes,) factors from s* and the classes of the steps (each (T, B)); see the module docstring.

    Classes come in groups of ``group_size`` (those of one body count); a class without data takes
    the smallest factor of the classes of its group of the same kind (``kinds``, (n_classes,) labels:
    for ``mlp``, bound or unbound closest pair, so that a flyby's factor says nothing of an orbit's),
    else of its group, else of all classes with data.
    """
    q = 1 - target_pass_rate
    factor = torch.full((n_classes,), math.nan, dtype=s_star.dtype)
    for c in classes.unique().tolist():
        quantiles = []
        for b in range(s_star.shape[1]):
            steps = s_star[classes[:, b] == c, b]
            if steps.numel() >= MIN_CLASS_STEPS:
                quantiles.append(torch.quantile(steps, q, interpolation="lower"))
        if quantiles:
            factor[c] = torch.stack(quantiles).min()
    known = ~torch.isnan(factor)
    overall = factor[known].min() if bool(known.any()) else torch.quantile(s_star.flatten(), q, interpolation="lower")
    index = torch.arange(n_classes)
    kind = torch.zeros(n_classes, dtype=torch.long) if kinds is None else kinds.to(torch.long)
    for c in range(n_classes):
        if not bool(known[c]):
            group = known & (index // group_size == c // group_size)
            same_kind = group & (kind == kind[c])
            donors = factor[same_kind] if bool(same_kind.any()) else factor[group]
            factor[c] = donors.min() if donors.numel() else overall
    return factor


def raise_within_budget(s_star: Tensor, classes: Tensor, start: Tensor, scales: Tensor,
                        target_pass_rate: float) -> Tensor:
    """(C,) class factors on the grid ``scales`` (G,, ascending), at least ``start`` (C,, rounded down
    to the grid), raised greedily while every system's failing steps stay within its budget.

    A step of system b in class c fails at factor f when its s* < f. System b's budget is
    ``(1 - target_pass_rate) * T`` failing steps of its T (or the number it fails at ``start``, if
    more); the class with the most steps whose next grid factor keeps every system within budget is
    raised, until none can be.
    """
    T = s_star.shape[0]
    C, G = start.shape[0], scales.shape[0]
    in_class = F.one_hot(classes, C).to(s_star.dtype)  # (T, B, C)
    below = (s_star.unsqueeze(-1) < scales.to(s_star)).to(s_star.dtype)  # (T, B, G)
    fails = torch.einsum("tbc,tbg->cgb", in_class, below)  # steps of system b in class c failing at factor g
    level = (torch.searchsorted(scales.to(start), start.contiguous(), right=True) - 1).clamp(0, G - 1)
    used = fails[torch.arange(C), level].sum(0)  # (B,)
    budget = used.clamp_min((1 - target_pass_rate) * T)
    steps_in = in_class.sum((0, 1))
    order = [c for c in torch.argsort(steps_in, descending=True).tolist() if steps_in[c] > 0]
    raised = True
    while raised:
        raised = False
        for c in order:
            if level[c] + 1 < G:
                trial = used - fails[c, level[c]] + fails[c, level[c] + 1]
                if bool((trial <= budget).all()):
                    used, level[c], raised = trial, level[c] + 1, True
                    break
    return torch.where(steps_in > 0, scales.to(start)[level], start)  # classes without steps keep their start


def reset_safety(predictor: DtPredictor) -> None:
    """Set the predictor's safety factors (its ``log_safety`` buffer, if it has one) back to 1."""
    log_safety = getattr(predictor, "log_safety", None)
    if isinstance(log_safety, Tensor):
        with torch.no_grad():
            log_safety.zero_()


def calibrate_safety(predictor: DtPredictor, integrator: Integrator, state: NBodyState, *, threshold: float,
                     target_pass_rate: float = 0.995, steps: int = 256, rounds: int = 3,
                     span: float = 4.0, grid: int = 65, gate: Gate | None = None,
                     reset: bool = False, max_factor: float = MAX_FACTOR,
                     stride: int = SCAN_STRIDE) -> CalibrationResult:
    """Set ``predictor.log_safety`` so each validation system in ``state`` passes ``target_pass_rate``
    of its unguarded steps under ``gate`` (default: the energy gate; see module docstring).
    ``state`` may hold padding bodies. The factors found multiply those the predictor has; with
    ``reset`` they start from 1 (:func:`reset_safety`), a calibration from scratch. No factor ends
    above ``max_factor`` (:data:`MAX_FACTOR`). ``stride`` 1 tries every factor of the grid at every
    step (see :func:`max_passing_scale`; 2.7x slower than the default)."""
    log_safety = getattr(predictor, "log_safety", None)
    if not isinstance(log_safety, Tensor) or not hasattr(predictor, "predict_with_class"):
        raise ConfigError(f"dt predictor {type(predictor).__name__} has no 'log_safety' factors to calibrate")
    if not 0 < target_pass_rate < 1:
        raise ConfigError(f"target_pass_rate must be in (0, 1); got {target_pass_rate}")
    if reset:
        reset_safety(predictor)
    scales = torch.logspace(-math.log10(span), math.log10(span), grid, dtype=state.dtype)
    groups = padding_groups(state) or [(torch.arange(state.batch_size), state.n_bodies)]
    n_classes = int(log_safety.numel())
    group_size = int(getattr(predictor, "safety_group_size", n_classes))
    kinds = getattr(predictor, "safety_kinds", None)
    total = torch.ones(n_classes, dtype=state.dtype)
    per_system, pass_rate = torch.ones(state.batch_size, dtype=state.dtype), 1.0
    was_training = predictor.training
    predictor.eval()
    with torch.no_grad():
        for _ in range(rounds):
            s_star = torch.zeros(steps, state.batch_size, dtype=state.dtype)
            classes = torch.zeros(steps, state.batch_size, dtype=torch.long)
            for idx, n in groups:
                s_star[:, idx], classes[:, idx] = _rollout_scales(
                    predictor, integrator, state.index(idx).trim_bodies(n), scales, threshold, steps, gate, stride)
            pass_rate = float((s_star >= 1).to(torch.float64).mean())
            per_system = torch.quantile(s_star, 1 - target_pass_rate, dim=0, interpolation="lower")
            factor = class_factors(s_star, classes, n_classes, group_size, target_pass_rate,
                                   kinds).clamp(1 / span, span)
            factor = raise_within_budget(s_star, classes, factor, scales, target_pass_rate)
            before = log_safety.clone()
            log_safety.add_(factor.log().to(log_safety)).clamp_(max=math.log(max_factor))
            factor = (log_safety - before).exp().to(total)
            total *= factor
            if bool((factor.log().abs() < math.log(float(scales[1] / scales[0]))).all()):
                break
    predictor.train(was_training)
    return CalibrationResult(factor=total.tolist(), safety=[float(v) for v in log_safety.exp()],
                             per_system=per_system, pass_rate=pass_rate)
