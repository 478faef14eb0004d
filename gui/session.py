"""The viewer's runs and their state: :class:`RunSession`.

A session starts one run at a time (a :class:`~gui.jobs.TrainingJob` or
:class:`~gui.jobs.PlaybackJob` in a :class:`~gui.worker.RunWorker`), routes its messages through
one :class:`~gui.bridge.EngineBridge` whose signals the window connects to once, and keeps the
state machine of the controls::

    IDLE --start--> RUNNING --pause--> PAUSED --resume--> RUNNING
    RUNNING or PAUSED --stop--> STOPPING;  any of them --the run ends--> IDLE

The last training run is kept after it ends, so that its model can still be saved (its process
writes the checkpoint) and played; it is closed when the next training starts or the session
shuts down.
"""

from __future__ import annotations

import enum
import time
from functools import partial

from PyQt6.QtCore import QObject, pyqtSignal

from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.predictor import DtPredictor

from .bridge import EngineBridge
from .jobs import Job, RunOutcome
from .modes import MODE_SIMULATE, MODE_TRAIN, check_mode
from .worker import RunWorker


class RunState(enum.Enum):
    """Where the session's run is."""

    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"


class RunSession(QObject):
    """Owns the run worker, the bridge and the run state; the window keeps layout and slots.

    Signals (GUI thread): ``state_changed(RunState)``, ``started(mode)``, ``finished(mode,
    RunOutcome)`` once a run has ended. ``isolation`` is passed to :class:`RunWorker` ("process" or "thread").
    """

    state_changed = pyqtSignal(object)
    started = pyqtSignal(str)
    finished = pyqtSignal(str, object)

    def __init__(self, host: PluginHost, *, isolation: str = "process", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self.isolation = isolation
        self.bridge = EngineBridge(self)
        self.state = RunState.IDLE
        self.mode: str | None = None
        self.worker: RunWorker | None = None
        self.trainer: RunWorker | None = None
        self.trained_model: DtPredictor | None = None
        self.last_outcome: RunOutcome | None = None
        self._closing: set[RunWorker] = set()
        self._started_at = 0.0
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._elapsed_final = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def parked(self) -> bool:
        """True while the run has stopped between two steps because of a pause."""
        return self.worker is not None and self.worker.parked

    @property
    def can_save(self) -> bool:
        """Whether :meth:`save_checkpoint` has a model to write."""
        return self.trainer is not None and (self.trainer.active or self.trainer.model is not None)

    def elapsed(self) -> float:
        """Seconds the current (or last) run has been running, pauses excluded."""
        if self.state is RunState.IDLE:
            return self._elapsed_final
        now = time.monotonic()
        paused = self._paused_total + (now - self._paused_since if self._paused_since is not None else 0.0)
        return now - self._started_at - paused

    # ------------------------------------------------------------------ transitions
    def _set_state(self, state: RunState) -> None:
        if state is not self.state:
            self.state = state
            self.state_changed.emit(state)

    def start(self, mode: str, job: Job) -> bool:
        """Start ``job`` as a run of ``mode`` ("train" or "simulate"); False when a run is active.

        Raises what starting the worker raises (e.g. a job that cannot be pickled); the session
        is then unchanged.
        """
        if self.state is not RunState.IDLE:
            return False
        worker = RunWorker(job, self.host, isolation=self.isolation, parent=self)
        worker.received.connect(self.bridge.deliver)
        worker.ended.connect(partial(self._on_ended, worker))
        worker.closed.connect(partial(self._on_closed, worker))
        worker.start()
        if check_mode(mode) == MODE_TRAIN:
            self._retire(self.trainer)
            self.trainer, self.trained_model = worker, None
        self.worker, self.mode = worker, mode
        self._started_at, self._paused_since, self._paused_total = time.monotonic(), None, 0.0
        self._set_state(RunState.RUNNING)
        self.started.emit(mode)
        return True

    def pause(self) -> bool:
        """Pause the run at its next step boundary; False unless it was running."""
        if self.state is not RunState.RUNNING or self.worker is None:
            return False
        self.worker.pause()
        self._paused_since = time.monotonic()
        self._set_state(RunState.PAUSED)
        return True

    def resume(self) -> bool:
        """Resume a paused run; False unless it was paused."""
        if self.state is not RunState.PAUSED or self.worker is None:
            return False
        self.worker.resume()
        self._end_pause()
        self._set_state(RunState.RUNNING)
        return True

    def toggle_pause(self) -> bool:
        return self.resume() if self.state is RunState.PAUSED else self.pause()

    def stop(self) -> bool:
        """Stop the run at its next step boundary (a paused one too); False when there is none."""
        if self.state not in (RunState.RUNNING, RunState.PAUSED) or self.worker is None:
            return False
        self.worker.stop()
        self._end_pause()
        self._set_state(RunState.STOPPING)
        return True

    def _end_pause(self) -> None:
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None

    def set_speed(self, steps_per_second: float) -> None:
        """Change the pace of an active playback."""
        if self.mode == MODE_SIMULATE and self.worker is not None:
            self.worker.set_speed(steps_per_second)

    def save_checkpoint(self, path: str) -> bool:
        """Ask the last training run to write a checkpoint; the bridge's ``checkpoint_saved`` or
        ``checkpoint_failed`` answers. False when no training has run in this session."""
        if self.trainer is None:
            return False
        self.trainer.save_checkpoint(path)
        return True

    # ------------------------------------------------------------------ end of runs
    def _on_ended(self, worker: RunWorker, outcome: RunOutcome) -> None:
        if worker is self.trainer and worker.model is not None:
            self.trained_model = worker.model
        if worker is not self.worker:
            return
        self._end_pause()
        self._elapsed_final = self.elapsed()
        mode = self.mode or MODE_TRAIN
        if mode == MODE_SIMULATE:
            self._retire(worker)
        self.worker, self.mode, self.last_outcome = None, None, outcome
        self._set_state(RunState.IDLE)
        self.finished.emit(mode, outcome)

    def _retire(self, worker: RunWorker | None) -> None:
        if worker is not None:
            self._closing.add(worker)
            worker.close()

    def _on_closed(self, worker: RunWorker) -> None:
        self._closing.discard(worker)
        if worker is not self.worker and worker is not self.trainer:
            worker.deleteLater()  # with its job (state, model)

    def shutdown(self) -> None:
        """Stop the active run and close every run's process, waiting a few seconds at most."""
        for worker in {w for w in (self.worker, self.trainer, *self._closing) if w is not None}:
            worker.shutdown()
        self.trainer = None
