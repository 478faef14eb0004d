"""Measure dt predictors against the energy gate, tune classical rules, and the greedy oracle.

These are the figures by which a learned predictor is judged: for a run of a given number of
orbits without any guard, how many steps and force evaluations it takes, what fraction of its
steps pass the gate (error <= threshold; by default the energy gate, |dE/E|), the worst per-step
error and the drift at the end. Every function takes the gate that judges the steps
(``gate``, a :class:`~nbtoolkit.gate.Gate`; None = the energy gate). Tuning and the oracle
evaluate many candidate timesteps of one system at once as a batch.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import validate
from .contracts import DtPredictor, Gate, History, Integrator, checked_error, checked_step
from .errors import ConfigError, NBToolkitError
from .gate import is_energy_gate
from .physics import relative_energy_error, state_energy
from .registry import identity_of, stamp
from .simulate import iter_steps, simulate, time_remaining
from .state import NBodyState, System


@dataclass(frozen=True)
class GateReport:
    """How one predictor did on one system over a run, without the guard."""

    label: str
    steps: int
    force_evals: int
    pass_fraction: float  # fraction of steps whose gate error is <= threshold
    max_step_rel_dE: float
    final_rel_dE: float  # |E_end - E_0| / |E_0|
    wall_time: float
    position_error: float | None = None  # max_i |x_i - x_i,ref| at the end, with a reference (nbtoolkit.reference)
    velocity_error: float | None = None  # max_i |v_i - v_i,ref|
    max_step_error: float | None = None  # the largest per-step error of a gate other than the energy gate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictor(
    system: System,
    integrator: Integrator,
    predictor: DtPredictor,
    *,
    orbits: float,
    threshold: float = 2e-4,
    label: str = "predictor",
    max_steps: int = 1_000_000,
    reference: Any = None,
    gate: Gate | None = None,
) -> list[GateReport]:
    """Run ``orbits`` periods of every system of ``system`` with ``predictor`` (no guard); one report per
    system.

    ``gate`` judges the steps (default: the energy gate). With a ``reference``
    (:class:`nbtoolkit.reference.Reference` of the same systems) the reports also hold the
    position and velocity errors against it at the end time."""
    validate.run_span(orbits=orbits, threshold=threshold)
    state, period = system.state, _period(system, "evaluate_predictor")
    traj = simulate(state, integrator, predictor, orbits=orbits, period=period, max_steps=max_steps, gate=gate)
    active = traj.dt > 0
    reports = []
    errors = _reference_errors(reference, state, traj)
    for b in range(state.batch_size):
        rel, judged = traj.rel_dE[active[:, b], b], traj.step_error[active[:, b], b]
        e0, e1 = traj.energy[0, b], traj.energy[-1, b]
        worst = None if traj.gate_error is None else float(judged.max()) if judged.size else 0.0
        reports.append(GateReport(
            label=label, steps=int(active[:, b].sum()), force_evals=int(traj.force_evals[b]),
            pass_fraction=float(np.mean(judged <= threshold)) if judged.size else 1.0,
            max_step_rel_dE=float(rel.max()) if rel.size else 0.0,
            final_rel_dE=float(abs(e1 - e0) / abs(e0)), wall_time=traj.wall_time, max_step_error=worst, **errors[b],
        ))
    return reports


def _period(system: System, caller: str) -> Tensor:
    """The period (B,) of ``system``; a :class:`ConfigError` naming ``caller`` if it has none."""
    if system.period is None:
        raise ConfigError(f"{caller} runs a number of orbits and needs the period of each system; this system has "
                          "none (give it one: System(state, period))")
    return system.period


def _reference_errors(reference: Any, state: NBodyState, traj: Any) -> list[dict[str, float | None]]:
    from .reference import error_columns

    final = state.replace(position=torch.as_tensor(traj.position[-1]), velocity=torch.as_tensor(traj.velocity[-1]),
                          time=torch.as_tensor(traj.time[-1]))
    return error_columns(reference, final)


class ScaledPredictor(DtPredictor):
    """``scale (B,) * base(state)``: runs one rule with a different eta (or constant dt) per system.
    Errors about its dt name the base rule (it carries the base's registry identity)."""

    def __init__(self, base: DtPredictor, scale: Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("scale", scale)
        self.history_len = int(getattr(base, "history_len", 0))
        self.time_even = bool(getattr(base, "time_even", False))
        identity = identity_of(base)
        if identity is not None:
            stamp(self, identity)

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        scaled = getattr(self.base, "scaled_forward", None)  # a rule the scale must enter inside (symmetric)
        if callable(scaled):
            return scaled(state, history, self.scale)
        return self.scale * self.base(state, history)


def _all_steps_pass(
    state: NBodyState, period: Tensor, integrator: Integrator, predictor: DtPredictor, scales: Tensor,
    orbits: float, threshold: float, max_steps: int, gate: Gate | None,
) -> Tensor:
    """For each candidate scale (K,), ascending, whether every step of ``orbits`` periods passes the gate
    (bool (K,)), for the candidates that can still be the largest passing one.

    ``state`` is one system; it is replicated K times and run as one batch. A candidate stops
    (dt = 0) as soon as one of its steps fails, so failing candidates cost little; and once a candidate
    has passed to the end, every smaller one stops and reads False, since it can no longer be the
    answer (the smallest candidates take the most steps: 64 times as many as the largest on the first
    grid, which on a cluster with a hard binary is hours).
    """
    K = scales.shape[0]
    batch = NBodyState.cat([state] * K)
    end = batch.time + orbits * period.to(batch.dtype).expand(K)
    failed = torch.zeros(K, dtype=torch.bool)
    below_a_pass = torch.zeros(K, dtype=torch.bool)

    def limit(s: NBodyState) -> Tensor:
        left = time_remaining(end, s.time)
        return torch.where(failed | below_a_pass, torch.zeros_like(left), left)

    stepper = iter_steps(batch, integrator, ScaledPredictor(predictor, scales), dt_limit=limit, gate=gate)
    for k, result in enumerate(stepper, start=1):
        failed |= (result.dt > 0) & (result.error > threshold)
        stopped = limit(result.state) == 0  # at the end, failed or below a pass
        passed = stopped & ~failed & ~below_a_pass
        if bool(passed.any()):
            below_a_pass |= torch.arange(K) < int(torch.nonzero(passed).max())
        if bool((stopped | below_a_pass).all()):
            return ~failed & ~below_a_pass
        if k >= max_steps:
            raise NBToolkitError(f"tuning exceeded max_steps={max_steps}; narrow the search range")
    raise AssertionError("unreachable")  # pragma: no cover


def tune_scale(
    system: System,
    integrator: Integrator,
    predictor: DtPredictor,
    *,
    orbits: float,
    threshold: float = 2e-4,
    high: float = 1.0,
    span: float = 64.0,
    grid: int = 8,
    rounds: int = 3,
    max_steps: int = 2_000_000,
    gate: Gate | None = None,
) -> float:
    """The largest factor s such that ``s * predictor`` passes ``gate`` (default: the energy gate)
    on every step of the run.

    Searches a log grid of ``grid`` factors in [high/span, high], moving the bracket down while no
    candidate passes, then refines between the largest passing factor and the next one up
    (``rounds`` times). For a rule with parameter eta the best eta is ``s * eta``; for the
    ``constant`` rule with dt = 1 it is the best constant dt. ``system`` must hold one system.
    """
    state, period = system.state, _period(system, "tune_scale")
    if state.batch_size != 1:
        raise ConfigError(f"tune_scale takes one system; got a batch of {state.batch_size}")
    validate.run_span(orbits=orbits, threshold=threshold)
    lo, hi = high / span, high
    for _ in range(12):
        scales = torch.logspace(math.log10(lo), math.log10(hi), grid, dtype=state.dtype)
        ok = _all_steps_pass(state, period, integrator, predictor, scales, orbits, threshold, max_steps, gate)
        if bool(ok.any()):
            break
        lo, hi = lo / span, lo
    else:
        raise NBToolkitError("no factor in a range of span**12 passes the gate")
    for _ in range(rounds):
        best = int(torch.nonzero(ok).max())
        lo_new = float(scales[best])
        # refine up to the next candidate, or search a whole grid span higher if the top one passed
        hi_new = float(scales[best + 1]) if best + 1 < grid else lo_new * float(scales[-1] / scales[0])
        scales = torch.logspace(math.log10(lo_new), math.log10(hi_new), grid, dtype=state.dtype)
        ok = _all_steps_pass(state, period, integrator, predictor, scales, orbits, threshold, max_steps, gate)
        if not bool(ok.any()):  # non-monotonic: keep the last factor known to pass
            return lo_new
    return float(scales[int(torch.nonzero(ok).max())])


@dataclass(frozen=True)
class TunedRule:
    """A classical rule with its parameter tuned for one system: the predictor, the option tuned
    (``eta``, or ``dt`` for rules without one, such as ``constant``) and its value."""

    predictor: DtPredictor
    option: str
    value: float

    def label(self, rule: str) -> str:
        return f"{rule} ({self.option}={self.value:.4g}, tuned)"


def tuned_option(host: Any, rule: str, options: dict[str, Any] | None = None) -> str:
    """The option :func:`tune_rule` tunes: ``eta`` if the rule's factory takes one, else ``dt``; an
    error names the rule's plugin if it takes neither, or if ``options`` already fix the one tuned,
    and ``options`` that the rule does not take, or whose values its declarations refuse, are
    errors here, before any run."""
    entry = host.predictors.get(rule)
    accepted = entry.accepted_options()
    for option in ("eta", "dt"):
        if accepted is None or option in accepted:
            if option in (options or {}):
                raise ConfigError(f"option {option} of '{rule}' is the one tuned; it cannot also be given")
            host.predictors.checked_options(rule, dict(options or {}))
            return option
    raise ConfigError(
        f"tuning a rule sets its 'eta' (or 'dt') option, but dt predictor '{rule}' from plugin "
        f"'{entry.plugin}' ({entry.source}) takes neither; it takes: {', '.join(sorted(accepted)) or '(nothing)'}"
    )


def tune_rule(host: Any, rule: str, system: System, integrator: Integrator, *, orbits: float,
              threshold: float = 2e-4, gate: Gate | None = None, options: dict[str, Any] | None = None,
              max_steps: int = 2_000_000) -> TunedRule:
    """The registered rule ``rule`` (with ``options``) with its ``eta`` — or ``dt`` — tuned by
    :func:`tune_scale` so that every step of ``orbits`` periods of ``system`` (one system) passes the gate."""
    option = tuned_option(host, rule, options)
    extra = dict(options or {})
    base = host.predictors.create(rule, **extra, **{option: 1.0})
    high = 1.0 if option == "eta" else float(_period(system, "tune_rule").reshape(-1)[0]) * orbits / 20
    value = tune_scale(system, integrator, base, orbits=orbits, threshold=threshold, high=high, gate=gate,
                       max_steps=max_steps)
    return TunedRule(host.predictors.create(rule, **extra, **{option: value}), option, value)


def evaluate_tuned_rule(host: Any, rule: str, system: System, integrator: Integrator, *, orbits: float,
                        threshold: float = 2e-4, gate: Gate | None = None, options: dict[str, Any] | None = None,
                        max_steps: int = 2_000_000, label: str | None = None,
                        reference: Any = None) -> tuple[TunedRule, GateReport]:
    """Tune ``rule`` for ``system`` (one system; :func:`tune_rule`) and run it once more to report: the
    tuned rule and its gate report, labelled ``label`` (default "RULE (eta=..., tuned)")."""
    tuned = tune_rule(host, rule, system, integrator, orbits=orbits, threshold=threshold, gate=gate, options=options,
                      max_steps=max_steps)
    (report,) = evaluate_predictor(system, integrator, tuned.predictor, orbits=orbits, threshold=threshold, gate=gate,
                                   max_steps=max_steps, reference=reference, label=label or tuned.label(rule))
    return tuned, report


def greedy_oracle(
    system: System,
    integrator: Integrator,
    *,
    orbits: float,
    threshold: float = 2e-4,
    first_dt: float | None = None,
    candidates: int = 25,
    refine: int = 9,
    max_steps: int = 1_000_000,
    reference: Any = None,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """Step ``system`` (one system) with, at every step, the largest dt found that passes ``gate``
    (default: the energy gate).

    Each step tries ``candidates`` dts spanning a factor 8 either side of the previous dt as one
    batch, takes the largest passing one, then refines between it and the next candidate up.
    The energy error is not monotonic in dt, so this is a strong reference, not a strict floor.
    Returns steps, force evaluations (those of the accepted steps) and max per-step |dE/E| (and,
    with a gate other than the energy gate, its largest accepted error ``max_step_error``).
    """
    state, period = system.state, _period(system, "greedy_oracle")
    if state.batch_size != 1:
        raise ConfigError(f"greedy_oracle takes one system; got a batch of {state.batch_size}")
    validate.run_span(orbits=orbits, threshold=threshold)
    validate.energy_normalisable(state)
    start = _time.perf_counter()
    end = state.time + orbits * float(period.reshape(-1)[0])  # (1,)
    dt_prev = first_dt if first_dt is not None else 1e-3 * float(period.reshape(-1)[0])
    current, energy = state.detach(), state_energy(state)
    steps, worst, worst_error = 0, 0.0, 0.0
    factors = torch.logspace(-math.log10(8), math.log10(8), candidates, dtype=state.dtype)
    with torch.no_grad():
        while (left := float(time_remaining(end, current.time)[0])) > 0:
            if steps >= max_steps:
                raise NBToolkitError(f"greedy oracle exceeded max_steps={max_steps}")
            dts = torch.clamp(dt_prev * factors, max=left)
            rel, err, states = _try_dts(current, energy, integrator, dts, gate)
            passing = torch.nonzero(err <= threshold)
            while passing.numel() == 0:
                dts = dts / 8 ** 2
                rel, err, states = _try_dts(current, energy, integrator, dts, gate)
                passing = torch.nonzero(err <= threshold)
            best = int(passing.max())
            if best + 1 < dts.shape[0] and float(dts[best]) < left:
                fine = torch.logspace(math.log10(float(dts[best])), math.log10(float(dts[best + 1])), refine + 2,
                                      dtype=state.dtype)[1:-1]
                rel_f, err_f, states_f = _try_dts(current, energy, integrator, fine, gate)
                passing_f = torch.nonzero(err_f <= threshold)
                if passing_f.numel():
                    k = int(passing_f.max())
                    dts, rel, err, states, best = fine, rel_f, err_f, states_f, k
            worst, worst_error = max(worst, float(rel[best])), max(worst_error, float(err[best]))
            current = states.index(best)
            energy = state_energy(current)
            dt_prev = float(dts[best])
            steps += 1
    judged = {} if is_energy_gate(gate) else {"max_step_error": worst_error}
    return {"label": "greedy oracle", "steps": steps, "force_evals": steps * integrator.force_evals_per_step,
            "pass_fraction": 1.0, "max_step_rel_dE": worst,
            "final_rel_dE": float(relative_energy_error(state_energy(state), energy)[0]),
            "wall_time": _time.perf_counter() - start, **judged, **_oracle_errors(reference, current)}


def _oracle_errors(reference: Any, final: NBodyState) -> dict[str, float | None]:
    from .reference import error_columns

    return error_columns(reference, final)[0] if reference is not None else {}


def _try_dts(state: NBodyState, energy: Tensor, integrator: Integrator, dts: Tensor,
             gate: Gate | None) -> tuple[Tensor, Tensor, NBodyState]:
    """Step copies of one system with each dt in ``dts`` (K,); return rel_dE (K,), the gate's
    errors (K,) and the K new states."""
    batch = NBodyState.cat([state] * dts.shape[0])
    new = checked_step(integrator, batch, dts)
    rel = relative_energy_error(energy.expand(dts.shape[0]), state_energy(new))
    if is_energy_gate(gate):
        return rel, rel, new
    assert gate is not None  # is_energy_gate(None) is True
    return rel, checked_error(gate, batch, new, gate.reference(batch)), new


def format_gate_table(rows: list[dict[str, Any]], gate_label: str = "gate error") -> str:
    """A fixed-width table of gate reports (label, steps, force evals, pass %, max and final |dE/E|),
    with a column of the largest per-step error of the gate (headed ``max`` + ``gate_label``) when
    a gate other than the energy gate judged the runs."""
    width = max([len("predictor")] + [len(r["label"]) for r in rows])
    lines = [f"{'predictor':<{width}}  {'steps':>8}  {'force evals':>11}  {'pass %':>7}  "
             f"{'max |dE/E|':>10}  {'final |dE/E|':>12}"]
    for r in rows:
        lines.append(
            f"{r['label']:<{width}}  {r['steps']:>8d}  {r['force_evals']:>11d}  {100 * r['pass_fraction']:>7.2f}  "
            f"{r['max_step_rel_dE']:>10.3e}  {r['final_rel_dE']:>12.3e}"
        )
    if any(r.get("max_step_error") is not None for r in rows):  # evaluate --gate other than energy
        head = f"max {gate_label}"
        size = max(len(head), 10)
        lines = [lines[0] + f"  {head:>{size}}"] + [line + f"  {r['max_step_error']:>{size}.3e}"
                                                    for line, r in zip(lines[1:], rows)]
    if any(r.get("position_error") is not None for r in rows):  # evaluate --reference
        lines = [lines[0] + f"  {'|dx| vs ref':>11}  {'|dv| vs ref':>11}"] + [
            line + "".join(f"  {r[k]:>11.3e}" if r.get(k) is not None else f"  {'-':>11}"
                           for k in ("position_error", "velocity_error"))
            for line, r in zip(lines[1:], rows)
        ]
    return "\n".join(lines)
