"""Headless simulation: step a batched state with a named integrator and dt predictor.

:func:`iter_steps` is the step-by-step generator (used by the viewer's playback);
:func:`simulate` runs it for a number of steps, up to an end time, or for a number of orbital
periods, optionally with the **energy-gate guard**: a system whose step has a relative energy
error above the threshold is retried with half the dt (up to ``max_halvings`` times), and the
number of guarded steps is reported.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from . import validate
from .contracts import checked_step
from .control import RunControl
from .errors import NBToolkitError
from .integrator import Integrator
from .physics import relative_energy_error, state_energy
from .predictor import DtPredictor, History, bind_integrator, checked_dt, pop_force_evals
from .state import NBodyState

DEFAULT_MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class StepResult:
    """One step of every system in a batch.

    state: the state after the step; dt (B,) the dt actually used; rel_dE (B,) its |dE/E|;
    guarded (B,) whether the guard had to shrink dt; force_evals (B,) force evaluations spent
    on the step including guard retries.
    """

    state: NBodyState
    dt: Tensor
    rel_dE: Tensor
    guarded: Tensor
    force_evals: Tensor


def iter_steps(
    state: NBodyState,
    integrator: Integrator,
    predictor: DtPredictor,
    *,
    predictor_name: str | None = None,
    guard_threshold: float | None = None,
    max_halvings: int = 20,
    control: RunControl | None = None,
    dt_limit: Callable[[NBodyState], Tensor] | None = None,
) -> Iterator[StepResult]:
    """Yield one :class:`StepResult` per step, forever (the caller decides when to stop).

    ``dt_limit(state)`` (B,) caps dt (``simulate`` uses it to land on an end time; a limit of 0
    freezes a system). The predictor sees the last ``predictor.history_len`` states. No gradients
    are recorded. Every integrator step goes through :func:`nbtoolkit.contracts.checked_step`, so
    an integrator that breaks its contract (wrong shapes, time not advanced, NaN out of a finite
    state) raises :class:`~nbtoolkit.errors.PluginError` naming it and its plugin. A system with
    zero total energy is refused (|dE/E| would be undefined; see
    :func:`nbtoolkit.validate.energy_normalisable`).
    """
    validate.run_span(guard_threshold=guard_threshold, max_halvings=max_halvings)
    state = state.detach()
    state.validate()
    validate.energy_normalisable(state)
    history_len = int(getattr(predictor, "history_len", 0))
    history = History.empty(state, history_len) if history_len else None
    energy = state_energy(state)
    evals_per_step = integrator.force_evals_per_step
    bind_integrator(predictor, integrator)  # predictors that take trial steps use the run's integrator
    pop_force_evals(predictor, state.batch_size)  # and count from zero
    while True:
        if control is not None:
            control.checkpoint()
        with torch.no_grad():  # not held across the yield: grad mode is thread-global
            proposed = checked_dt(predictor(state, history), state, predictor_name, predictor)
            limit = None if dt_limit is None else dt_limit(state)
            dt = proposed if limit is None else torch.minimum(proposed, limit)
            new = checked_step(integrator, state, dt)
            new_energy = state_energy(new)
            rel = relative_energy_error(energy, new_energy)
            evals = torch.full_like(dt, evals_per_step)
            extra = pop_force_evals(predictor, state.batch_size)  # trial steps taken to choose dt
            if extra is not None:
                evals = evals + extra.to(evals)
            guarded = torch.zeros_like(dt, dtype=torch.bool)
            if guard_threshold is not None:
                new, new_energy, rel, dt, evals, guarded = _guard(
                    state, new, energy, new_energy, rel, proposed, limit, evals, integrator, guard_threshold,
                    max_halvings,
                )
            if history is not None:
                history = history.push(state)
        state, energy = new, new_energy
        yield StepResult(state, dt, rel, guarded, evals)


def _guard(
    state: NBodyState, new: NBodyState, e0: Tensor, e1: Tensor, rel: Tensor, proposed: Tensor,
    limit: Tensor | None, evals: Tensor, integrator: Integrator, threshold: float, max_halvings: int,
) -> tuple[NBodyState, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Retry the systems whose step failed the gate with half their proposed dt (still capped by
    ``limit``), up to ``max_halvings`` times. Returns the new state, energies, rel_dE, dt used,
    force evaluations and which systems were guarded."""
    guarded = rel > threshold
    failing = guarded.clone()
    dt = proposed if limit is None else torch.minimum(proposed, limit)
    for _ in range(max_halvings):
        if not bool(failing.any()):
            break
        idx = torch.nonzero(failing).squeeze(1)
        proposed = proposed.clone()
        proposed[idx] = proposed[idx] / 2
        dt = proposed if limit is None else torch.minimum(proposed, limit)
        retry = checked_step(integrator, state.index(idx), dt[idx])
        retry_e = state_energy(retry)
        retry_rel = relative_energy_error(e0[idx], retry_e)
        new = _scatter(new, idx, retry)
        e1, rel = e1.clone(), rel.clone()
        e1[idx], rel[idx] = retry_e, retry_rel
        evals = evals.clone()
        evals[idx] += integrator.force_evals_per_step
        failing = rel > threshold
    return new, e1, rel, dt, evals, guarded


def _scatter(base: NBodyState, idx: Tensor, part: NBodyState) -> NBodyState:
    """``base`` with systems ``idx`` replaced by ``part`` (both keep their acceleration caches if any)."""
    def put(full: Tensor, sub: Tensor) -> Tensor:
        out = full.clone()
        out[idx] = sub
        return out

    acc = None
    if base.acceleration is not None and part.acceleration is not None:
        acc = put(base.acceleration, part.acceleration)
    return base.replace(
        position=put(base.position, part.position), velocity=put(base.velocity, part.velocity),
        time=put(base.time, part.time), acceleration=acc,
    )


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
    step, energy (S+1, B), guarded (S, B) bool, force_evals (B,) total per system.
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

    @property
    def steps(self) -> int:
        """Steps taken (the maximum over systems, counting only steps with dt > 0)."""
        return int((self.dt > 0).sum(0).max()) if self.dt.size else 0

    def summary(self) -> dict[str, Any]:
        """steps, force_evals (all systems), max per-step |dE/E|, final |dE/E| vs the start, guarded steps, wall time."""
        e0, e1 = self.energy[0], self.energy[-1]
        return {
            "systems": int(self.mass.shape[0]),
            "steps": self.steps,
            "force_evals": int(self.force_evals.sum()),
            "max_step_rel_dE": float(self.rel_dE.max()) if self.rel_dE.size else 0.0,
            "final_rel_dE": float(np.max(np.abs(e1 - e0) / np.abs(e0))),
            "guarded_steps": int(self.guarded.sum()),
            "wall_time": self.wall_time,
        }

    def save(self, path: str | Path) -> None:
        """Write the trajectory to ``.npz`` (atomically)."""
        from .io import save_npz_atomic

        save_npz_atomic(
            path, time=self.time, position=self.position, velocity=self.velocity, mass=self.mass, dt=self.dt,
            rel_dE=self.rel_dE, energy=self.energy, guarded=self.guarded, force_evals=self.force_evals,
            G=np.float64(self.G), softening=np.float64(self.softening),
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
    predictor_name: str | None = None,
    control: RunControl | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Trajectory:
    """Run a simulation and record every step.

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
        raise NBToolkitError(f"give exactly one of steps, t_end or orbits; got {', '.join(chosen) or 'none'}")
    validate.run_span(t_end=t_end, orbits=orbits, guard_threshold=guard_threshold, max_halvings=max_halvings,
                      max_steps=max_steps)
    if steps is not None:
        validate.integer("steps", steps)
    t0 = state.time.detach().clone()
    end: Tensor | None = None
    if orbits is not None:
        if period is None:
            raise NBToolkitError("orbits needs the period of each system; this state has no known period")
        if not orbits > 0:
            raise NBToolkitError(f"orbits must be > 0; got {orbits}")
        end = t0 + float(orbits) * torch.as_tensor(period, dtype=state.dtype)
    elif t_end is not None:
        end = torch.as_tensor(t_end, dtype=state.dtype).expand_as(t0).clone()
        if bool((end <= t0).any()):
            raise NBToolkitError(f"t_end must be later than the start time {t0.min().item()}; got {t_end}")
    elif steps is not None and steps < 1:
        raise NBToolkitError(f"steps must be >= 1; got {steps}")
    if steps is not None and steps > max_steps:
        raise NBToolkitError(f"steps={steps} exceeds max_steps={max_steps}")

    dt_limit = None if end is None else (lambda s: time_remaining(end, s.time))
    if end is not None and _constant_dt(predictor) is not None:
        needed = float(((end - t0) / _constant_dt(predictor)).max())
        if needed > max_steps:
            raise NBToolkitError(
                f"a constant dt of {_constant_dt(predictor):g} needs about {needed:.3g} steps to reach the end time, "
                f"more than max_steps={max_steps}; use a larger dt or raise max_steps"
            )
    energy0 = state_energy(state.detach())
    times, positions, velocities, energies = [t0.numpy().copy()], [state.position.detach().numpy().copy()], [
        state.velocity.detach().numpy().copy()], [energy0.numpy().copy()]
    dts, rels, guards = [], [], []
    evals = np.zeros(state.batch_size, dtype=np.int64)
    start = _time.perf_counter()
    stepper = iter_steps(
        state, integrator, predictor, predictor_name=predictor_name, guard_threshold=guard_threshold,
        max_halvings=max_halvings, control=control, dt_limit=dt_limit,
    )
    for k, result in enumerate(stepper, start=1):
        active = (result.dt > 0).numpy()
        s = result.state
        times.append(s.time.numpy().copy())
        positions.append(s.position.numpy().copy())
        velocities.append(s.velocity.numpy().copy())
        energies.append(state_energy(s).numpy().copy())
        dts.append(result.dt.numpy().copy())
        rels.append(np.where(active, result.rel_dE.numpy(), 0.0))
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
    )
