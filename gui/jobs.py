"""The viewer's runs as jobs: training (``Trainer.fit``) and simulation playback (no Qt).

A job runs in the run's own process (:mod:`gui.runner`) and reports through ``send(kind,
payload)``: the engine's observer events (:class:`EventRelay`), playback frames, notices. Jobs,
their results and everything they send are plain picklable data.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from nbtoolkit import hookimpl
from nbtoolkit.control import RunStopped
from nbtoolkit.events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected
from nbtoolkit.physics import relative_energy_error, state_energy
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.state import NBodyState, System

from .control import WorkerControl

#: ``send(kind, payload)``: how a job reports to the viewer
Send = Callable[[str, Any], None]

_RELAY_IDS = itertools.count(1)


class Job(Protocol):
    """What :func:`gui.runner.run_child` runs."""

    def run(self, host: PluginHost, control: WorkerControl, send: Send) -> Any:
        """Do the work, calling ``control.checkpoint()`` between steps; return the result."""

    def trained_model(self) -> DtPredictor | None:
        """The model the run trained (sent back to the viewer at the end), or None."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``kind`` is "finished", "stopped" or "failed"; ``result`` is the job's
    return value (a ``FitResult`` or :class:`PlaybackSummary`), or None when it failed."""

    kind: str
    result: Any = None
    error: str | None = None
    details: str | None = None


def reference_dt(reference: DtPredictor, mass: np.ndarray, position: np.ndarray, velocity: np.ndarray,
                 time: np.ndarray, G: float, softening: float) -> np.ndarray:
    """The dt of a classical rule for k states, as a float64 array (k,).

    mass (k, N), position and velocity (k, N, D), time (k,), in the units of the run.
    """
    state = NBodyState.from_arrays(mass, position, velocity, time, G=G, softening=softening, validate=False)
    return _rule_dt(reference, state)


def _rule_dt(reference: DtPredictor, state: NBodyState) -> np.ndarray:
    with torch.no_grad():
        dt = reference(state, None)
    return dt.detach().cpu().numpy().astype(np.float64, copy=False)


class EventRelay:
    """Observer plugin that sends every training event on, unchanged (plain numbers and numpy arrays).

    For accepted steps it also sends the dt of a classical rule (for example ``freefall``) for
    the state each listed system is now in (the state its next step starts from), so the viewer
    can draw the learned dt against a classical reference without doing physics itself: the
    payload of ``step_accepted`` is ``(event, reference_dt (k,) or None)``. A reference rule that
    fails is dropped, with one ``notice``.
    """

    def __init__(self, send: Send, reference: DtPredictor | None, *, G: float, softening: float) -> None:
        self._send = send
        self._reference = reference
        self._G = float(G)
        self._softening = float(softening)
        self.plugin_name = f"viewer-relay-{next(_RELAY_IDS)}"

    @hookimpl
    def nbtoolkit_fit_start(self, event: FitStart) -> None:
        self._send("fit_start", event)

    @hookimpl
    def nbtoolkit_step_accepted(self, event: StepAccepted) -> None:
        ref = None
        if self._reference is not None:
            try:
                ref = reference_dt(self._reference, event.mass, event.position, event.velocity, event.time,
                                   self._G, self._softening)
            except Exception as exc:  # a broken reference rule must never stop training
                self._reference = None
                self._send("notice", f"reference dt disabled: {type(exc).__name__}: {exc}")
        self._send("step_accepted", (event, ref))

    @hookimpl
    def nbtoolkit_step_rejected(self, event: StepRejected) -> None:
        self._send("step_rejected", event)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event: ReplayIteration) -> None:
        self._send("replay_iteration", event)

    @hookimpl
    def nbtoolkit_epoch_end(self, event: EpochEnd) -> None:
        self._send("epoch_end", event)

    @hookimpl
    def nbtoolkit_fit_end(self, event: FitEnd) -> None:
        self._send("fit_end", event)


@dataclass
class TrainingJob:
    """Builds a ``Trainer`` and runs ``fit()``; the trainer stays for checkpoints after the run.

    ``config``: a ``TrainConfig``; ``system``: the initial state (B, N, D) and its orbital periods (B,),
    if known (needed by ``stop_at_period``); ``reference``: classical dt rule sent with every accepted
    step (None = none).
    """

    config: Any
    system: System
    reference: DtPredictor | None = None
    trainer: Any = field(default=None, init=False, repr=False)

    @property
    def state(self) -> NBodyState:
        """The initial state (B, N, D), as :class:`PlaybackJob` has it."""
        return self.system.state

    def run(self, host: PluginHost, control: WorkerControl, send: Send) -> Any:
        from nbtoolkit.training import Trainer

        relay = EventRelay(send, self.reference, G=self.state.G, softening=self.state.softening)
        host.register_plugin(relay, name=relay.plugin_name, source="nbtoolkit viewer")
        try:
            self.trainer = Trainer(self.config, self.system, host=host, control=control)
            return self.trainer.fit()
        finally:
            host.unregister_plugin(relay.plugin_name)

    def save_checkpoint(self, path: str) -> None:
        """Write a checkpoint of the trainer to ``path`` (call between two steps)."""
        if self.trainer is None:
            raise RuntimeError("no trained model yet: the run has not started training")
        self.trainer.save_checkpoint(path)

    def trained_model(self) -> DtPredictor | None:
        return None if self.trainer is None else self.trainer.predictor


@dataclass(frozen=True)
class PlaybackFrame:
    """One simulated step of every system (B systems, N bodies, D dimensions).

    step: 1-based step count; time (B,) after the step; position (B, N, D) after the step;
    dt (B,) used; rel_dE (B,) the step's error under the gate (|dE/E| for the energy gate);
    drift (B,) |E - E0| / |E0| since the start; halvings (B,) guard halvings of dt on this step;
    reference_dt (B,) the classical rule's dt for the state the step started from, or None.
    """

    step: int
    time: np.ndarray
    position: np.ndarray
    dt: np.ndarray
    rel_dE: np.ndarray
    drift: np.ndarray
    halvings: np.ndarray
    reference_dt: np.ndarray | None


@dataclass(frozen=True)
class PlaybackSummary:
    """The end of a playback: steps taken and force evaluations per system (B,)."""

    steps: int
    force_evals: np.ndarray


#: frames are sent in batches at most this often (s), however fast the steps are
FRAME_BATCH_INTERVAL = 0.02


@dataclass
class PlaybackJob:
    """Plays a simulation with a dt predictor at a chosen pace, sending lists of
    :class:`PlaybackFrame` in step order as ``frames``.

    ``predictor``: a ready module (e.g. the model just trained) or the path of a checkpoint;
    ``steps``: steps to play (0 = until stopped); ``speed``: steps per second (0 = as fast as
    possible); ``guard_threshold``: threshold of the guard of ``iter_steps`` (None = off);
    ``reference``: classical dt rule to compare with (None = none); ``integrator_options``:
    options of the integrator's factory; ``gate``: name of the gate that judges the steps (and
    the guard's retries); ``field_name``: the external field the systems move in (a registry name,
    "" = none), built in the run with ``field_options``, so its potential is in every energy.
    """

    state: NBodyState
    predictor: DtPredictor | str | Path
    integrator: str
    steps: int = 0
    speed: float = 60.0
    guard_threshold: float | None = None
    reference: DtPredictor | None = None
    integrator_options: dict[str, Any] = field(default_factory=dict)
    gate: str = "energy"
    field_name: str = ""
    field_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")
        self.set_speed(self.speed)

    def set_speed(self, steps_per_second: float) -> None:
        """Change the pace (steps per second, 0 = unlimited); safe to call from any thread."""
        if not steps_per_second >= 0:
            raise ValueError(f"speed must be >= 0 steps per second; got {steps_per_second}")
        self.speed = float(steps_per_second)

    def trained_model(self) -> DtPredictor | None:
        return None

    def run(self, host: PluginHost, control: WorkerControl, send: Send) -> PlaybackSummary:
        from nbtoolkit.simulate import iter_steps
        from nbtoolkit.training import load_predictor

        predictor = self.predictor
        if not isinstance(predictor, DtPredictor):
            predictor = load_predictor(predictor, host=host)
        predictor.eval()
        integrator = host.integrators.create(self.integrator, **self.integrator_options)
        state = self.state.detach()
        if self.field_name:
            state = state.replace(field=host.fields.create(self.field_name, **self.field_options))
        stepper = iter_steps(state, integrator, predictor, guard_threshold=self.guard_threshold, control=control,
                             gate=host.gates.create(self.gate))
        energy0 = state_energy(state)
        evals_per_step = max(1, int(integrator.force_evals_per_step))
        force_evals = np.zeros(state.batch_size, dtype=np.int64)
        pending: list[PlaybackFrame] = []
        last_emit = due = time.perf_counter()
        step = 0
        try:
            while self.steps == 0 or step < self.steps:
                ref = None if self.reference is None else _rule_dt(self.reference, state)
                result = next(stepper)
                step += 1
                state = result.state
                evals = result.force_evals.numpy().astype(np.int64)
                force_evals += evals
                drift = relative_energy_error(energy0, result.energy).numpy()
                pending.append(PlaybackFrame(
                    step=step, time=state.time.numpy().copy(), position=state.position.numpy().copy(),
                    dt=result.dt.numpy().copy(), rel_dE=result.error.numpy().copy(), drift=drift.copy(),
                    halvings=evals // evals_per_step - 1, reference_dt=ref,
                ))
                now = time.perf_counter()
                speed = self.speed
                due = max(due + 1.0 / speed, now - 0.05) if speed > 0 else now
                if due > now or now - last_emit >= FRAME_BATCH_INTERVAL:
                    send("frames", pending)
                    pending, last_emit = [], now
                while speed > 0 and not control.stop_requested:
                    left = due - time.perf_counter()
                    if left <= 0:
                        break
                    control.sleep(min(left, 0.05))
                    control.checkpoint()
                    speed = self.speed
        except RunStopped:
            if pending:
                send("frames", pending)
            raise
        if pending:
            send("frames", pending)
        return PlaybackSummary(steps=step, force_evals=force_evals)
