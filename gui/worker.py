"""Background runs for the viewer: training (``Trainer.fit``) and simulation playback.

Each run lives on its own :class:`~PyQt6.QtCore.QThread`. The GUI thread talks to it only
through a :class:`WorkerControl` (pause / resume / stop, tasks run between steps) and hears
back only through queued Qt signals, so the event loop is never blocked by a run.

Lifecycle: ``worker.start()``; the job runs; its :class:`RunOutcome` is stored in
:attr:`RunWorker.outcome`; the thread's event loop quits and :attr:`RunWorker.worker_thread` emits
``finished`` (the GUI then calls :meth:`RunWorker.finalize` and reads the outcome). ``stop()`` takes effect
at the next checkpoint between two steps, and ``shutdown()`` (used when the window closes)
stops the run and waits for the thread to end.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PyQt6.QtCore import QObject, QThread, pyqtSignal, pyqtSlot

from nbtoolkit.control import RunControl, RunStopped
from nbtoolkit.physics import relative_energy_error, state_energy
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.state import NBodyState

from .bridge import reference_dt

#: the two kinds of run: training a dt predictor, or playing a simulation with one
MODE_TRAIN = "train"
MODE_SIMULATE = "simulate"


class WorkerControl(RunControl):
    """A :class:`RunControl` that can also run tasks on the worker thread between two steps,
    reports whether the loop is parked in a pause, and offers an interruptible sleep.

    Tasks (``submit``) run at the next :meth:`checkpoint`, even while paused, so that e.g. a
    checkpoint file is written from a consistent state without racing the training loop.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._tasks: deque[Callable[[], None]] = deque()
        self._parked = False

    def pause(self) -> None:
        with self._cond:
            super().pause()
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            super().resume()
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            super().stop()
            self._cond.notify_all()

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task()`` on the worker thread at its next checkpoint. ``task`` must not raise."""
        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    @property
    def parked(self) -> bool:
        """True while the loop is blocked in :meth:`checkpoint` because of a pause."""
        with self._cond:
            return self._parked

    def run_pending(self) -> None:
        """Run the submitted tasks now, on the calling thread (the worker's, at the end of a run)."""
        with self._cond:
            tasks = list(self._tasks)
            self._tasks.clear()
        for task in tasks:
            task()

    def checkpoint(self) -> None:
        """Run pending tasks; block while paused; raise :class:`RunStopped` once stopped."""
        while True:
            self.run_pending()
            with self._cond:
                if self._tasks:
                    continue
                if self.stop_requested:
                    self._parked = False
                    raise RunStopped("stopped on request")
                if not self.paused:
                    self._parked = False
                    return
                self._parked = True
                self._cond.wait()

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds`` (s), returning early when a stop, pause or task arrives."""
        with self._cond:
            if not (self.stop_requested or self.paused or self._tasks):
                self._cond.wait(timeout=max(0.0, seconds))


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``kind`` is "finished", "stopped" or "failed"; ``result`` is the job's
    return value (a ``FitResult`` or :class:`PlaybackSummary`), or None when it failed."""

    kind: str
    result: Any = None
    error: str | None = None
    details: str | None = None


class RunWorker(QObject):
    """Runs :meth:`job` once on a dedicated QThread; subclasses implement :meth:`job`."""

    def __init__(self) -> None:
        super().__init__()
        self.control = WorkerControl()
        self.outcome: RunOutcome | None = None
        self.worker_thread = QThread()
        self.worker_thread.setObjectName(type(self).__name__)
        self.moveToThread(self.worker_thread)
        self.worker_thread.started.connect(self._run)

    def job(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        self.worker_thread.start()

    def is_running(self) -> bool:
        return self.worker_thread.isRunning()

    def stop(self) -> None:
        """Ask the run to end at its next checkpoint (also wakes a paused run)."""
        self.control.stop()

    def shutdown(self) -> None:
        """Stop the run and block until its thread has ended (used when the window closes).

        A stop takes effect between two steps, so this waits at most one step.
        """
        self.control.stop()
        self.worker_thread.wait()

    def finalize(self) -> None:
        """On the GUI thread, once ``thread.finished`` arrived: join the thread and run any task
        submitted too late for the worker thread to pick up."""
        self.worker_thread.wait()
        self.control.run_pending()

    @pyqtSlot()
    def _run(self) -> None:
        try:
            result = self.job()
            stopped = bool(getattr(result, "stopped", False)) or self.control.stop_requested
            outcome = RunOutcome("stopped" if stopped else "finished", result)
        except RunStopped:
            outcome = RunOutcome("stopped")
        except Exception as exc:
            outcome = RunOutcome("failed", error=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())
        self.control.run_pending()  # e.g. a checkpoint requested just before the run ended
        self.outcome = outcome
        self.worker_thread.quit()


class TrainingWorker(RunWorker):
    """Builds a ``Trainer`` on the worker thread and runs ``fit()``.

    ``checkpoint_saved(path)`` / ``checkpoint_failed(path, message)`` report :meth:`save_checkpoint`.
    """

    checkpoint_saved = pyqtSignal(str)
    checkpoint_failed = pyqtSignal(str, str)

    def __init__(self, config: Any, state: NBodyState, *, host: PluginHost, period: torch.Tensor | None = None) -> None:
        """``config``: a ``TrainConfig``; ``state``: the initial state (B, N, D); ``period`` (B,):
        the orbital periods, if known (needed by ``stop_at_period``)."""
        super().__init__()
        self.config = config
        self.state = state
        self.period = period
        self.host = host
        self.trainer: Any = None

    def job(self) -> Any:
        from nbtoolkit.training import Trainer

        self.trainer = Trainer(self.config, self.state, host=self.host, control=self.control, period=self.period)
        return self.trainer.fit()

    def save_checkpoint(self, path: str | Path) -> None:
        """Write a checkpoint of the trainer to ``path``.

        While the run is active this happens on the worker thread between two steps; after it
        ended (or before it built the trainer) it happens right away on the calling thread.
        The result is reported by ``checkpoint_saved`` / ``checkpoint_failed``.
        """
        target = str(path)

        def task() -> None:
            if self.trainer is None:
                self.checkpoint_failed.emit(target, "no trained model yet: the run has not started training")
                return
            try:
                self.trainer.save_checkpoint(target)
            except Exception as exc:
                self.checkpoint_failed.emit(target, f"{type(exc).__name__}: {exc}")
            else:
                self.checkpoint_saved.emit(target)

        if self.is_running() and not self.control.stop_requested:
            self.control.submit(task)
        else:
            task()


@dataclass(frozen=True)
class PlaybackFrame:
    """One simulated step of every system (B systems, N bodies, D dimensions).

    step: 1-based step count; time (B,) after the step; position (B, N, D) after the step;
    dt (B,) used; rel_dE (B,) the step's error under the gate (|dE/E| for the energy gate);
    drift (B,) |E - E0| / |E0| since the start;
    halvings (B,) guard halvings of dt on this step; reference_dt (B,) the classical rule's dt for
    the state the step started from, or None.
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


#: frames are sent to the GUI in batches at most this often (s), however fast the steps are
FRAME_BATCH_INTERVAL = 0.02


class PlaybackWorker(RunWorker):
    """Plays a simulation with a dt predictor at a chosen pace (steps per second).

    ``frames`` carries lists of :class:`PlaybackFrame` in step order. The predictor is either a
    ready module (e.g. the model just trained) or the path of a checkpoint, loaded on the
    worker thread with ``nbtoolkit.training.load_predictor``.
    """

    frames = pyqtSignal(object)  # list[PlaybackFrame]

    def __init__(self, state: NBodyState, *, predictor: DtPredictor | str | Path, integrator: str,
                 host: PluginHost, steps: int = 0, speed: float = 60.0, guard_threshold: float | None = None,
                 reference: str | None = None, integrator_options: dict | None = None, gate: str = "energy") -> None:
        """``steps``: steps to play (0 = until stopped); ``speed``: steps per second (0 = as fast
        as possible); ``guard_threshold``: threshold of the guard of ``iter_steps`` (None = off);
        ``reference``: name of a classical dt predictor to compare with (None = none);
        ``integrator_options``: options of the integrator's factory; ``gate``: name of the gate
        that judges the steps (and the guard's retries)."""
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        self.state = state
        self.predictor_source = predictor
        self.integrator_name = integrator
        self.integrator_options = dict(integrator_options or {})
        self.host = host
        self.steps = int(steps)
        self.reference_name = reference
        self.guard_threshold = guard_threshold
        self.gate_name = gate
        self._speed = 0.0
        self.set_speed(speed)

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, steps_per_second: float) -> None:
        """Change the pace (steps per second, 0 = unlimited); safe to call from any thread."""
        if not steps_per_second >= 0:
            raise ValueError(f"speed must be >= 0 steps per second; got {steps_per_second}")
        self._speed = float(steps_per_second)

    def _load_predictor(self) -> DtPredictor:
        if isinstance(self.predictor_source, DtPredictor):
            return self.predictor_source
        from nbtoolkit.training import load_predictor

        return load_predictor(self.predictor_source, host=self.host)

    def job(self) -> PlaybackSummary:
        from nbtoolkit.simulate import iter_steps

        predictor = self._load_predictor()
        was_training = predictor.training
        predictor.eval()
        try:
            return self._play(iter_steps, predictor)
        finally:
            predictor.train(was_training)

    def _play(self, iter_steps: Callable[..., Any], predictor: DtPredictor) -> PlaybackSummary:
        integrator = self.host.integrators.create(self.integrator_name, **self.integrator_options)
        reference = self.host.predictors.create(self.reference_name) if self.reference_name else None
        gate = self.host.gates.create(self.gate_name)
        state = self.state.detach()
        energy0 = state_energy(state)
        evals_per_step = max(1, int(integrator.force_evals_per_step))
        force_evals = np.zeros(state.batch_size, dtype=np.int64)
        stepper = iter_steps(state, integrator, predictor, predictor_name="viewer model",
                             guard_threshold=self.guard_threshold, control=self.control, gate=gate,
                             gate_name=self.gate_name)
        pending: list[PlaybackFrame] = []
        last_emit = time.perf_counter()
        due = last_emit
        step = 0
        previous = state
        try:
            while self.steps == 0 or step < self.steps:
                ref = None
                if reference is not None:
                    ref = reference_dt(reference, previous.mass.numpy(), previous.position.numpy(),
                                       previous.velocity.numpy(), previous.time.numpy(), previous.G,
                                       previous.softening)
                result = next(stepper)
                step += 1
                previous = result.state
                evals = result.force_evals.numpy().astype(np.int64)
                force_evals += evals
                with torch.no_grad():
                    drift = relative_energy_error(energy0, state_energy(result.state)).numpy()
                pending.append(PlaybackFrame(
                    step=step, time=result.state.time.numpy().copy(), position=result.state.position.numpy().copy(),
                    dt=result.dt.numpy().copy(), rel_dE=result.error.numpy().copy(), drift=drift.copy(),
                    halvings=evals // evals_per_step - 1, reference_dt=ref,
                ))
                now = time.perf_counter()
                speed = self._speed
                due = max(due + 1.0 / speed, now - 0.05) if speed > 0 else now
                if due > now or now - last_emit >= FRAME_BATCH_INTERVAL:
                    self.frames.emit(pending)
                    pending, last_emit = [], now
                while speed > 0 and not self.control.stop_requested:
                    left = due - time.perf_counter()
                    if left <= 0:
                        break
                    self.control.sleep(min(left, 0.05))
                    self.control.checkpoint()
                    speed = self._speed
        except RunStopped:
            if pending:
                self.frames.emit(pending)
            raise
        if pending:
            self.frames.emit(pending)
        return PlaybackSummary(steps=step, force_evals=force_evals)
