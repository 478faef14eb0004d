"""Headless simulation: step a batched state with a named integrator and dt predictor.

:func:`iter_steps` is the step-by-step generator (used by the viewer's playback);
:func:`simulate` runs it for a number of steps, up to an end time, or for a number of orbital
periods, optionally with the **guard**: a system whose step fails the gate (its error above the
threshold; by default the energy gate, |dE/E|) is retried with half the dt (up to
``max_halvings`` times), and the number of guarded steps is reported. Any gate of the registry
(:class:`~nbtoolkit.gate.Gate`) can judge the steps; every step's |dE/E| is recorded whichever
gate judges them.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import validate
from .contracts import (
    DtPredictor,
    Gate,
    History,
    Integrator,
    RunHooks,
    checked_dt,
    checked_error,
    checked_step,
)
from .control import RunControl
from .errors import ConfigError, NBToolkitError
from .gate import is_energy_gate
from .physics import relative_energy_error, state_energy
from .state import NBodyState

DEFAULT_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class StepResult:
    """One step of every system in a batch.

    state: the state after the step; dt (B,) the dt actually used; rel_dE (B,) its |dE/E|;
    guarded (B,) whether the guard had to shrink dt; force_evals (B,) force evaluations spent
    on the step including guard retries; error (B,) the gate's error of the step (the same
    tensor as rel_dE with the energy gate); energy (B,) the total energy of ``state`` (computed for the
    gate anyway, so that a caller recording it need not compute it again).
    """

    state: NBodyState
    dt: Tensor
    rel_dE: Tensor
    guarded: Tensor
    force_evals: Tensor
    error: Tensor
    energy: Tensor


def iter_steps(
    state: NBodyState,
    integrator: Integrator,
    predictor: DtPredictor,
    *,
    guard_threshold: float | None = None,
    max_halvings: int = 20,
    control: RunControl | None = None,
    dt_limit: Callable[[NBodyState], Tensor] | None = None,
    gate: Gate | None = None,
) -> Iterator[StepResult]:
    """Yield one :class:`StepResult` per step, forever (the caller decides when to stop).

    ``gate`` judges every step (default: the energy gate) and, with ``guard_threshold``, decides
    which steps the guard retries; its answer goes through :func:`nbtoolkit.contracts.checked_error`.

    ``dt_limit(state)`` (B,) caps dt (``simulate`` uses it to land on an end time; a limit of 0
    freezes a system). The predictor sees the last ``predictor.history_len`` states. No gradients
    are recorded. Every integrator step goes through :func:`nbtoolkit.contracts.checked_step`, so
    an integrator that breaks its contract (wrong shapes, time not advanced, NaN out of a finite
    state) raises :class:`~nbtoolkit.errors.PluginError` naming it and its plugin; every dt goes
    through :func:`nbtoolkit.predictor.checked_dt`. Plugins are named by the identity their registry
    stamped on them (:func:`nbtoolkit.registry.describe`), other objects by their class. A system
    with zero total energy is refused (|dE/E| would be undefined; see
    :func:`nbtoolkit.validate.energy_normalisable`).
    """
    validate.run_span(guard_threshold=guard_threshold, max_halvings=max_halvings)
    state = state.detach()
    state.validate()
    validate.energy_normalisable(state)
    history_len = int(getattr(predictor, "history_len", 0))
    history = History.empty(state, history_len) if history_len else None
    energy = state_energy(state)
    judge = _Judge(gate)
    evals_per_step = integrator.force_evals_per_step
    hooks = RunHooks(predictor)
    hooks.bind_integrator(integrator)  # predictors that take trial steps use the run's integrator
    hooks.pop_force_evals(state.batch_size)  # and count from zero
    while True:
        if control is not None:
            control.checkpoint()
        with torch.no_grad():  # not held across the yield: grad mode is thread-global
            proposed = checked_dt(predictor(state, history), state, predictor)
            limit = None if dt_limit is None else dt_limit(state)
            dt = proposed if limit is None else torch.minimum(proposed, limit)
            new = checked_step(integrator, state, dt)
            new_energy = state_energy(new)
            rel = relative_energy_error(energy, new_energy)
            reference = judge.reference(state)
            error = judge.error(state, new, rel, reference)
            evals = torch.full_like(dt, evals_per_step)
            extra = hooks.pop_force_evals(state.batch_size)  # trial steps taken to choose dt
            if extra is not None:
                evals = evals + extra.to(evals)
            guarded = torch.zeros_like(dt, dtype=torch.bool)
            if guard_threshold is not None:
                new, new_energy, rel, error, dt, evals, guarded = _guard(
                    state, new, energy, new_energy, rel, error, reference, judge, proposed, limit, evals, integrator,
                    guard_threshold, max_halvings,
                )
            hooks.observe_step(dt, error)  # predictors that adapt to their steps' errors
            if history is not None:
                history = history.push(state)
        state, energy = new, new_energy
        yield StepResult(state, dt, rel, guarded, evals, error, energy)


class _Judge:
    """The gate of a run. The energy gate's error is the |dE/E| that every step computes anyway,
    so it is taken from there instead of being computed twice; other gates are asked, checked."""

    def __init__(self, gate: Gate | None) -> None:
        self.gate = gate
        self.energy = is_energy_gate(gate)

    def reference(self, state: NBodyState) -> Tensor | None:
        return None if self.energy else self.gate.reference(state)  # type: ignore[union-attr]

    def error(self, before: NBodyState, after: NBodyState, rel: Tensor, reference: Tensor | None) -> Tensor:
        if self.energy:
            return rel
        return checked_error(self.gate, before, after, reference)  # type: ignore[arg-type]


def _guard(
    state: NBodyState, new: NBodyState, e0: Tensor, e1: Tensor, rel: Tensor, error: Tensor, reference: Tensor | None,
    judge: _Judge, proposed: Tensor, limit: Tensor | None, evals: Tensor, integrator: Integrator, threshold: float,
    max_halvings: int,
) -> tuple[NBodyState, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Retry the systems whose step failed the gate with half their proposed dt (still capped by
    ``limit``), up to ``max_halvings`` times. Returns the new state, energies, rel_dE, the gate's
    errors, dt used, force evaluations and which systems were guarded."""
    guarded = error > threshold
    failing = guarded.clone()
    dt = proposed if limit is None else torch.minimum(proposed, limit)
    for _ in range(max_halvings):
        if not bool(failing.any()):
            break
        idx = torch.nonzero(failing).squeeze(1)
        proposed = proposed.clone()
        proposed[idx] = proposed[idx] / 2
        dt = proposed if limit is None else torch.minimum(proposed, limit)
        before = state.index(idx)
        retry = checked_step(integrator, before, dt[idx])
        retry_e = state_energy(retry)
        retry_rel = relative_energy_error(e0[idx], retry_e)
        retry_error = judge.error(before, retry, retry_rel, None if reference is None else reference[idx])
        new = new.scatter(idx, retry)
        e1, rel, error = e1.clone(), rel.clone(), error.clone()
        e1[idx], rel[idx], error[idx] = retry_e, retry_rel, retry_error
        evals = evals.clone()
        evals[idx] += integrator.force_evals_per_step
        failing = error > threshold
    return new, e1, rel, error, dt, evals, guarded


def _constant_dt(predictor: DtPredictor) -> float | None:
    """The dt of a predictor that always proposes the same one (a ``dt`` attribute and nothing
    learned or state-dependent), else None."""
    dt = getattr(predictor, "dt", None)
    if isinstance(dt, (int, float)) and not isinstance(dt, bool) and dt > 0 and not list(predictor.parameters()) \
            and not int(getattr(predictor, "history_len", 0)):
        return float(dt)
    return None


def time_remaining(end: Tensor, time: Tensor) -> Tensor:
    """Time left to ``end`` (B,), with round-off-sized remainders (relative 1e-12) counted as 0."""
    left = end - time
    return torch.where(left <= 1e-12 * end.abs().clamp_min(1.0), torch.zeros_like(left), left)


@dataclass
class Trajectory:
    """A recorded run. S steps of B systems with N bodies in D dimensions.

    time (S+1, B), position and velocity (S+1, B, N, D), mass (B, N), dt and rel_dE (S, B) per
    step, energy (S+1, B), guarded (S, B) bool, force_evals (B,) total per system; gate_error
    (S, B) the error per step of the gate that judged the run when it is not the energy gate
    (None when it is: its error is rel_dE; see :attr:`step_error`).
    """

    time: np.ndarray
    position: np.ndarray
    velocity: np.ndarray
    mass: np.ndarray
    dt: np.ndarray
    rel_dE: np.ndarray
    energy: np.ndarray
    guarded: np.ndarray
    force_evals: np.ndarray
    G: float
    softening: float
    wall_time: float
    info: dict[str, Any] = field(default_factory=dict)
    gate_error: np.ndarray | None = None

    @property
    def step_error(self) -> np.ndarray:
        """The gate's error of every step (S, B): ``gate_error``, or ``rel_dE`` for the energy gate."""
        return self.rel_dE if self.gate_error is None else self.gate_error

    @property
    def steps(self) -> int:
        """Steps taken (the maximum over systems, counting only steps with dt > 0)."""
        return int((self.dt > 0).sum(0).max()) if self.dt.size else 0

    def summary(self) -> dict[str, Any]:
        """steps, force_evals (all systems), max per-step |dE/E|, final |dE/E| vs the start, guarded steps, wall
        time, and with a gate other than the energy gate its largest per-step error (``max_step_error``)."""
        e0, e1 = self.energy[0], self.energy[-1]
        out = {
            "systems": int(self.mass.shape[0]),
            "steps": self.steps,
            "force_evals": int(self.force_evals.sum()),
            "max_step_rel_dE": float(self.rel_dE.max()) if self.rel_dE.size else 0.0,
            "final_rel_dE": float(np.max(np.abs(e1 - e0) / np.abs(e0))),
            "guarded_steps": int(self.guarded.sum()),
            "wall_time": self.wall_time,
        }
        if self.gate_error is not None:
            out["max_step_error"] = float(self.gate_error.max()) if self.gate_error.size else 0.0
        return out

    def save(self, path: str | Path) -> None:
        """Write the trajectory to ``.npz`` (atomically)."""
        from .io import save_npz_atomic

        extra = {} if self.gate_error is None else {"gate_error": self.gate_error}
        save_npz_atomic(
            path, time=self.time, position=self.position, velocity=self.velocity, mass=self.mass, dt=self.dt,
            rel_dE=self.rel_dE, energy=self.energy, guarded=self.guarded, force_evals=self.force_evals,
            G=np.float64(self.G), softening=np.float64(self.softening), **extra,
        )


def simulate(
    state: NBodyState,
    integrator: Integrator,
    predictor: DtPredictor,
    *,
    steps: int | None = None,
    t_end: float | Tensor | None = None,
    orbits: float | None = None,
    period: Tensor | None = None,
    guard_threshold: float | None = None,
    max_halvings: int = 20,
    max_steps: int = DEFAULT_MAX_STEPS,
    control: RunControl | None = None,
    progress: Callable[[int, float], None] | None = None,
    gate: Gate | None = None,
) -> Trajectory:
    """Run a simulation and record every step.

    ``gate`` judges every step and decides the guard's retries (default: the energy gate). A gate
    other than the energy gate adds its per-step errors to the trajectory (``gate_error``). Errors
    about the integrator, the predictor or the gate name each by its registry identity
    (``nbtoolkit.registry.describe``), as in :func:`iter_steps`.

    Give exactly one of ``steps`` (fixed count), ``t_end`` (end time, scalar or (B,)) or
    ``orbits`` together with ``period`` (B,). With an end time the last step is shortened to
    land on it exactly, and systems that arrive early wait (dt = 0) for the others.
    ``max_steps`` caps the run; exceeding it is an error, and a run whose first dt already
    implies more than ``max_steps`` steps at a constant dt is refused before it starts.
    ``progress(step, fraction_done)`` is called after each step. Non-finite or out-of-range
    parameters (``t_end`` NaN or inf, ``orbits`` <= 0, ``guard_threshold`` <= 0,
    ``max_halvings`` < 0) raise :class:`~nbtoolkit.errors.ConfigError` naming the parameter.
    """
    chosen = [name for name, value in (("steps", steps), ("t_end", t_end), ("orbits", orbits)) if value is not None]
    if len(chosen) != 1:
        raise ConfigError(f"give exactly one of steps, t_end or orbits; got {', '.join(chosen) or 'none'}")
    validate.run_span(t_end=t_end, orbits=orbits, guard_threshold=guard_threshold, max_halvings=max_halvings,
                      max_steps=max_steps)
    if steps is not None:
        validate.integer("steps", steps)
    t0 = state.time.detach().clone()
    end: Tensor | None = None
    if orbits is not None:
        if period is None:
            raise ConfigError("orbits needs the period of each system; this state has no known period")
        if not orbits > 0:
            raise ConfigError(f"orbits must be > 0; got {orbits}")
        end = t0 + float(orbits) * torch.as_tensor(period, dtype=state.dtype)
    elif t_end is not None:
        end = torch.as_tensor(t_end, dtype=state.dtype).expand_as(t0).clone()
        if bool((end <= t0).any()):
            raise ConfigError(f"t_end must be later than the start time {t0.min().item()}; got {t_end}")
    elif steps is not None and steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}")
    if steps is not None and steps > max_steps:
        raise ConfigError(f"steps={steps} exceeds max_steps={max_steps}")

    dt_limit = None if end is None else (lambda s: time_remaining(end, s.time))
    constant_dt = _constant_dt(predictor)
    if end is not None and constant_dt is not None:
        needed = float(((end - t0) / constant_dt).max())
        if needed > max_steps:
            raise ConfigError(
                f"a constant dt of {constant_dt:g} needs about {needed:.3g} steps to reach the end time, "
                f"more than max_steps={max_steps}; use a larger dt or raise max_steps"
            )
    energy0 = state_energy(state.detach())
    times, positions, velocities, energies = [t0.numpy().copy()], [state.position.detach().numpy().copy()], [
        state.velocity.detach().numpy().copy()], [energy0.numpy().copy()]
    dts, rels, guards = [], [], []
    errors: list[np.ndarray] | None = None if is_energy_gate(gate) else []  # the energy gate's are rels
    evals = np.zeros(state.batch_size, dtype=np.int64)
    start = _time.perf_counter()
    stepper = iter_steps(
        state, integrator, predictor, guard_threshold=guard_threshold, max_halvings=max_halvings, control=control,
        dt_limit=dt_limit, gate=gate,
    )
    for k, result in enumerate(stepper, start=1):
        active = (result.dt > 0).numpy()
        s = result.state
        times.append(s.time.numpy().copy())
        positions.append(s.position.numpy().copy())
        velocities.append(s.velocity.numpy().copy())
        energies.append(result.energy.numpy().copy())
        dts.append(result.dt.numpy().copy())
        rels.append(np.where(active, result.rel_dE.numpy(), 0.0))
        if errors is not None:
            errors.append(np.where(active, result.error.numpy(), 0.0))
        guards.append(result.guarded.numpy().copy())
        evals += np.where(active, result.force_evals.numpy().astype(np.int64), 0)
        if end is None:
            done_fraction = k / steps  # type: ignore[operator]
            finished = k >= steps  # type: ignore[operator]
        else:
            span = (end - t0).numpy()
            done_fraction = float(np.min((s.time.numpy() - t0.numpy()) / span))
            finished = bool((time_remaining(end, s.time) == 0).all())
        if progress is not None:
            progress(k, done_fraction)
        if finished:
            break
        if k >= max_steps:
            raise NBToolkitError(
                f"simulation reached max_steps={max_steps} before its end time "
                f"({100 * done_fraction:.1f}% done); raise max_steps or use a larger dt"
            )
    wall = _time.perf_counter() - start
    return Trajectory(
        time=np.stack(times), position=np.stack(positions), velocity=np.stack(velocities),
        mass=state.mass.detach().numpy().copy(), dt=np.stack(dts), rel_dE=np.stack(rels), energy=np.stack(energies),
        guarded=np.stack(guards), force_evals=evals, G=state.G, softening=state.softening, wall_time=wall,
        gate_error=None if errors is None else np.stack(errors),
    )
