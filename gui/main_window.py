"""The main window: controls on the left, the orbit view and the live plots on the right, a
status bar with the run's counters, and an error banner for failures.

Runs (training or simulation playback) execute on a worker thread (:mod:`gui.worker`); their
data reach the window only as queued Qt signals, whose slots append to buffers. A single
QTimer pulls the buffered data into the views: the orbit view at most :data:`FRAME_RATE` times
per second, the plots and the status bar at most :data:`PLOT_RATE` times per second, so redraws
are throttled however fast the run produces data.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PyQt6.QtCore import Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QCloseEvent, QShowEvent
from PyQt6.QtWidgets import (
    QFileDialog, QFrame, QHBoxLayout, QLabel, QMainWindow, QPushButton, QSplitter, QStatusBar, QVBoxLayout, QWidget,
)

from nbtoolkit.errors import NBToolkitError
from nbtoolkit.events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected
from nbtoolkit.plugin_manager import PluginHost, get_host
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.state import NBodyState

from .bridge import EngineBridge, connect_queued
from .controls import ControlPanel
from .orbit_view import OrbitView
from .plots import LivePlots
from .worker import MODE_SIMULATE, MODE_TRAIN, PlaybackFrame, PlaybackWorker, RunOutcome, RunWorker, TrainingWorker

log = logging.getLogger(__name__)

#: orbit-view redraws per second at most
FRAME_RATE = 40.0
#: plot and status-bar redraws per second at most (their axes are costly to redraw)
PLOT_RATE = 10.0
#: the frame timer ticks this often (ms) and redraws what is due; a short tick keeps the frame
#: rate close to FRAME_RATE when a tick comes late because the event loop was busy
TICK_MS = 5
#: errors a user can cause while setting up a run (shown in the banner, never raised)
SETUP_ERRORS = (NBToolkitError, ValueError, TypeError, KeyError, OSError)


class ErrorBanner(QFrame):
    """A dismissable red banner showing the last error; the traceback is in its tooltip."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setStyleSheet("ErrorBanner { background: #5c1a1a; border: 1px solid #a33; border-radius: 3px; }"
                           "QLabel { color: #ffdede; }")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("Dismiss")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.hide()

    def show_message(self, text: str, details: str | None = None) -> None:
        self.label.setText(text)
        self.setToolTip(details or "")
        self.show()

    def text(self) -> str:
        return self.label.text()


class MainWindow(QMainWindow):
    """The viewer. Public slots (:meth:`start`, :meth:`toggle_pause`, :meth:`stop`,
    :meth:`save_checkpoint`) are what the buttons call; tests and scripts may call them too.

    Signals, all emitted on the GUI thread: ``run_started(mode)``, ``run_finished(RunOutcome)``
    once the worker thread has ended, ``epoch_finished(EpochEnd)``, ``frames_received(int)``
    (simulation steps received), ``error_shown(str)``.
    """

    run_started = pyqtSignal(str)
    run_finished = pyqtSignal(object)
    epoch_finished = pyqtSignal(object)
    frames_received = pyqtSignal(int)
    error_shown = pyqtSignal(str)

    def __init__(self, host: PluginHost | None = None, *, frame_rate: float = FRAME_RATE,
                 plot_rate: float = PLOT_RATE, parent: QWidget | None = None) -> None:
        """``frame_rate`` and ``plot_rate``: most redraws per second of the orbit view and of the plots."""
        super().__init__(parent)
        self.host = host if host is not None else get_host()
        self.setWindowTitle("nbtoolkit viewer")
        self.controls = ControlPanel(self.host)
        self.orbit = OrbitView()
        self.plots = LivePlots()
        self.banner = ErrorBanner()

        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.orbit)
        views.addWidget(self.plots)
        views.setStretchFactor(0, 1)
        views.setStretchFactor(1, 1)
        self._views = views
        self._split_evenly = True  # on first show
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.banner)
        right_layout.addWidget(views, 1)
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(self.controls)
        main.addWidget(right)
        main.setStretchFactor(0, 0)
        main.setStretchFactor(1, 1)
        self.setCentralWidget(main)

        status = self.statusBar()
        assert status is not None  # a QMainWindow always creates its status bar on demand
        self._status: QStatusBar = status
        self.status_labels = {name: QLabel() for name in ("state", "epoch", "steps", "retrains", "part2", "time", "elapsed")}
        for label in self.status_labels.values():
            label.setMinimumWidth(90)
            self._status.addPermanentWidget(label)

        self.worker: RunWorker | None = None
        self.bridge: EngineBridge | None = None
        self.last_outcome: RunOutcome | None = None
        self.trained_predictor: DtPredictor | None = None
        self._training_worker: TrainingWorker | None = None
        self._mode: str | None = None
        self._paused = False
        self._stopping = False
        self._counters: dict[str, Any] = {}
        self._finished_epochs: list[EpochEnd] = []
        self._started_at = 0.0
        self._paused_since: float | None = None
        self._paused_total = 0.0
        self._elapsed_final = 0.0
        self._mass = np.ones((1, 1))  # (B, N) of the system shown
        self._latest_position = np.zeros((1, 1, 2))  # (B, N, D) newest known positions
        self._latest_time = np.zeros(1)  # (B,)
        self._reset_counters()

        self.controls.start_clicked.connect(self.start)
        self.controls.pause_clicked.connect(self.toggle_pause)
        self.controls.stop_clicked.connect(self.stop)
        self.controls.save_clicked.connect(self._ask_save_checkpoint)
        self.controls.speed_changed.connect(self._on_speed_changed)
        self.controls.preset_combo.currentTextChanged.connect(lambda _: self.preview_system())
        self.orbit.system_changed.connect(self._on_orbit_system_changed)

        if not (frame_rate > 0 and plot_rate > 0):
            raise ValueError(f"frame_rate and plot_rate must be > 0; got {frame_rate}, {plot_rate}")
        self._frame_period = 1.0 / frame_rate
        self._plot_period = 1.0 / plot_rate
        self._next_frame = self._next_plot = 0.0
        self.frame_timer = QTimer(self)
        self.frame_timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.frame_timer.setInterval(TICK_MS)
        self.frame_timer.timeout.connect(self._on_tick)
        self.frame_timer.start()

        self.resize(1400, 860)
        self.preview_system()
        self._update_controls()
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the worker thread has ended."""
        return self.worker is not None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def mode(self) -> str | None:
        """"train" or "simulate" while a run is active, else None."""
        return self._mode

    def error_text(self) -> str:
        """The error banner's text ("" when no error is shown)."""
        return "" if self.banner.isHidden() else self.banner.text()

    def status_text(self) -> str:
        """The status bar's counters as one line."""
        return "  |  ".join(label.text() for label in self.status_labels.values() if label.text())

    def _reset_counters(self) -> None:
        # epoch: 1-based number of the running (or last finished) epoch
        self._counters = {"epoch": None, "epochs": None, "accepted": 0, "retrains": 0, "replay": None,
                          "step": 0, "time": float("nan")}
        self._finished_epochs = []

    def _update_controls(self) -> None:
        can_save = self._training_worker is not None and (
            self._training_worker.is_running() or self._training_worker.trainer is not None)
        self.controls.set_run_state(self._mode, paused=self._paused, can_save=can_save)

    # ------------------------------------------------------------------ errors
    def show_error(self, title: str, message: str, details: str | None = None) -> None:
        """Show an error in the banner and the status bar (the app stays usable)."""
        text = f"{title}: {message}"
        self.banner.show_message(text, details)
        self._status.showMessage(text, 15000)
        log.error("%s%s", text, f"\n{details}" if details else "")
        self.error_shown.emit(text)

    # ------------------------------------------------------------------ system preview
    def preview_system(self) -> None:
        """Show the initial state of the chosen preset while idle (silently skipped if invalid)."""
        if self.is_running:
            return
        try:
            state = self.controls.build_system().state
        except SETUP_ERRORS as exc:
            self._status.showMessage(f"preset: {exc}", 8000)
            return
        self._show_initial_state(state)

    def _show_initial_state(self, state: NBodyState) -> None:
        """Set the orbit view up for ``state`` (B, N, D) and show where the shown system starts."""
        self._mass = state.mass.numpy().copy()
        self._latest_position = state.position.numpy().copy()
        self._latest_time = state.time.numpy().copy()
        self._show_orbit_system(self.orbit.system if self.orbit.system < state.batch_size else 0)

    def _show_orbit_system(self, system: int) -> None:
        """Point the orbit view at ``system`` of the batch, starting from its latest known position."""
        batch, _, dim = self._latest_position.shape
        self.orbit.set_system(self._mass[system], dim, batch)
        self.orbit.push_frame(self._latest_position[system], float(self._latest_time[system]))
        self.plots.show_system(system)

    def _on_orbit_system_changed(self, system: int) -> None:
        self._show_orbit_system(system)

    # ------------------------------------------------------------------ starting runs
    def start(self) -> bool:
        """Start what the control panel's mode says (training or simulation)."""
        if self.controls.mode == MODE_SIMULATE:
            return self.start_simulation()
        return self.start_training()

    def start_training(self) -> bool:
        """Train on the chosen preset with the shown settings; returns False if it could not start."""
        if self.is_running:
            return False
        try:
            config = self.controls.train_config()
            system = self.controls.build_system()
            state = system.state
            reference_name = self.controls.reference_name()
            reference = self.host.predictors.create(reference_name) if reference_name else None
        except SETUP_ERRORS as exc:
            self.show_error("Cannot start training", str(exc))
            return False
        self._begin(MODE_TRAIN, state, threshold=config.energy_threshold, band=(config.E_lower, config.E_upper),
                    reference_name=reference_name)
        bridge = EngineBridge(reference, G=state.G, softening=state.softening)
        connect_queued(bridge.fit_started, self._on_fit_started)
        connect_queued(bridge.step_accepted, self._on_step_accepted)
        connect_queued(bridge.step_rejected, self._on_step_rejected)
        connect_queued(bridge.replay_iteration, self._on_replay_iteration)
        connect_queued(bridge.epoch_ended, self._on_epoch_ended)
        connect_queued(bridge.fit_ended, self._on_fit_ended)
        connect_queued(bridge.notice, self._on_notice)
        worker = TrainingWorker(config, state, host=self.host, period=system.period)
        connect_queued(worker.checkpoint_saved, self._on_checkpoint_saved)
        connect_queued(worker.checkpoint_failed, self._on_checkpoint_failed)
        try:
            bridge.attach(self.host)
        except NBToolkitError as exc:
            self._mode = None
            self.show_error("Cannot start training", str(exc))
            self._update_controls()
            return False
        self.bridge = bridge
        self._training_worker = worker
        self._launch(worker)
        return True

    def start_simulation(self) -> bool:
        """Play the chosen preset with the model just trained or a checkpoint; False if it could not start."""
        if self.is_running:
            return False
        try:
            settings = self.controls.simulation_settings()
            state = self.controls.build_system().state
            predictor: DtPredictor | str
            if settings.checkpoint is not None:
                predictor = settings.checkpoint
                if not Path(predictor).is_file():
                    raise FileNotFoundError(f"checkpoint file '{predictor}' does not exist")
            elif self.trained_predictor is not None:
                predictor = self.trained_predictor
            else:
                raise NBToolkitError("no trained model yet: train one first, or choose a checkpoint file")
            reference_name = self.controls.reference_name()
            worker = PlaybackWorker(state, predictor=predictor, integrator=self.controls.integrator_combo.currentText(),
                                    host=self.host, steps=settings.steps, speed=settings.speed,
                                    guard_threshold=settings.guard_threshold, reference=reference_name,
                                    integrator_options=self.controls.integrator_options(), gate=settings.gate)
        except SETUP_ERRORS as exc:
            self.show_error("Cannot start simulation", str(exc))
            return False
        self._begin(MODE_SIMULATE, state, threshold=settings.guard_threshold, band=None, reference_name=reference_name)
        connect_queued(worker.frames, self._on_frames)
        self._launch(worker)
        return True

    def _begin(self, mode: str, state: NBodyState, *, threshold: float | None,
               band: tuple[float, float] | None, reference_name: str | None) -> None:
        self.banner.hide()
        self._mode = mode
        self._paused = False
        self._stopping = False
        self._reset_counters()
        self._started_at = time.monotonic()
        self._paused_since = None
        self._paused_total = 0.0
        self.plots.reset(mode, n_systems=state.batch_size, energy_threshold=threshold, band=band,
                         reference_name=reference_name)
        self._show_initial_state(state)

    def _launch(self, worker: RunWorker) -> None:
        connect_queued(worker.worker_thread.finished, functools.partial(self._on_thread_finished, worker))
        self.worker = worker
        worker.start()
        self._update_controls()
        self._status.showMessage("training..." if self._mode == MODE_TRAIN else "simulating...", 3000)
        self.run_started.emit(self._mode or "")

    # ------------------------------------------------------------------ run control
    def toggle_pause(self) -> None:
        if self._paused:
            self.resume()
        else:
            self.pause()

    def pause(self) -> None:
        """Pause the run at its next step boundary."""
        if self.worker is None or self._paused or self._stopping:
            return
        self.worker.control.pause()
        self._paused = True
        self._paused_since = time.monotonic()
        self._update_controls()

    def resume(self) -> None:
        if self.worker is None or not self._paused:
            return
        self.worker.control.resume()
        self._paused = False
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None
        self._update_controls()

    def stop(self) -> None:
        """Stop the run at its next step boundary (the thread then ends and the controls re-enable)."""
        if self.worker is None:
            return
        self._stopping = True
        if self._paused:
            self.resume()
        self.worker.stop()
        self._status.showMessage("stopping...", 3000)

    def save_checkpoint(self, path: str | Path) -> bool:
        """Save the trained (or training) model to ``path``; the result is reported in the status
        bar (or the error banner). Returns False if there is nothing to save."""
        if self._training_worker is None:
            self.show_error("Cannot save checkpoint", "no model has been trained in this window")
            return False
        self._training_worker.save_checkpoint(path)
        return True

    def _ask_save_checkpoint(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save checkpoint", "checkpoint.pt",
                                              "Checkpoints (*.pt);;All files (*)")
        if path:
            self.save_checkpoint(path)

    def _on_speed_changed(self, speed: float) -> None:
        if isinstance(self.worker, PlaybackWorker):
            self.worker.set_speed(speed)

    # ------------------------------------------------------------------ engine events (GUI thread)
    def _on_fit_started(self, event: FitStart) -> None:
        self._counters["epochs"] = event.epochs
        self._counters["epoch"] = event.start_epoch + 1

    def _on_step_accepted(self, event: StepAccepted, reference: np.ndarray | None) -> None:
        self.plots.add_accepted(event, reference)
        self._counters["accepted"] += len(event.systems)
        self._counters["epoch"] = event.epoch + 1
        systems = np.asarray(event.systems)
        self._latest_position[systems] = event.position
        self._latest_time[systems] = event.time
        hits = np.nonzero(systems == self.orbit.system)[0]
        if hits.size:
            j = int(hits[0])
            self.orbit.push_frame(event.position[j], float(event.time[j]))

    def _on_step_rejected(self, event: StepRejected) -> None:
        self.plots.add_rejected(event)
        self._counters["retrains"] += 1  # one optimizer step per rejected attempt, as the engine counts

    def _on_replay_iteration(self, event: ReplayIteration) -> None:
        self._counters["replay"] = (event.iteration, event.pass_count, event.batch_size)

    def _on_epoch_ended(self, event: EpochEnd) -> None:
        self.plots.add_epoch(event)
        self._finished_epochs.append(event)
        # resynchronise the running totals with the engine's own per-epoch counts
        self._counters["accepted"] = sum(e.accepted_steps for e in self._finished_epochs)
        self._counters["retrains"] = sum(e.retrains for e in self._finished_epochs)
        self._counters["epoch"] = event.epoch + 1
        self._counters["replay"] = None
        self.epoch_finished.emit(event)

    def _on_fit_ended(self, event: FitEnd) -> None:
        self._counters["accepted"] = event.total_accepted
        self._counters["retrains"] = event.total_retrains

    def _on_notice(self, message: str) -> None:
        self._status.showMessage(message, 10000)

    def _on_frames(self, frames: list[PlaybackFrame]) -> None:
        if not frames:
            return
        self.plots.add_frames(frames)
        s = self.orbit.system
        self._latest_position[:] = frames[-1].position
        self._latest_time[:] = frames[-1].time
        for frame in frames:
            self.orbit.push_frame(frame.position[s], float(frame.time[s]))
        self._counters["step"] = frames[-1].step
        self._counters["time"] = float(frames[-1].time[s])
        self.frames_received.emit(len(frames))

    def _on_checkpoint_saved(self, path: str) -> None:
        self._status.showMessage(f"checkpoint saved to {path}", 10000)

    def _on_checkpoint_failed(self, path: str, message: str) -> None:
        self.show_error(f"Could not save checkpoint '{path}'", message)

    # ------------------------------------------------------------------ end of a run
    def _on_thread_finished(self, worker: RunWorker) -> None:
        if worker is not self.worker:
            return  # already cleaned up by shutdown()
        self._finish_run()

    def _finish_run(self) -> None:
        worker = self.worker
        if worker is None:
            return
        worker.finalize()
        outcome = worker.outcome or RunOutcome("failed", error="the run ended without a result")
        self.last_outcome = outcome
        what = "Training" if self._mode == MODE_TRAIN else "Simulation"
        if outcome.kind == "failed":
            self.show_error(f"{what} failed", outcome.error or "unknown error", outcome.details)
        else:
            self._status.showMessage(f"{what} {outcome.kind}", 10000)
        if self.bridge is not None:
            self.bridge.detach()
            self.bridge = None
        if isinstance(worker, TrainingWorker) and worker.trainer is not None:
            self.trained_predictor = worker.trainer.predictor
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None
        self._elapsed_final = self._elapsed()
        self.worker = None
        self._mode = None
        self._paused = False
        self._stopping = False
        self.refresh()
        self._update_controls()
        self.run_finished.emit(outcome)

    def shutdown(self) -> None:
        """Stop any run and wait for its thread (at most one step); safe to call twice."""
        self.frame_timer.stop()
        if self.worker is not None:
            self.worker.shutdown()
            self._finish_run()

    def showEvent(self, event: QShowEvent | None) -> None:
        super().showEvent(event)
        if self._split_evenly:  # give the orbit view and the plots half the width each
            self._split_evenly = False
            width = sum(self._views.sizes())
            self._views.setSizes([width // 2, width - width // 2])

    def closeEvent(self, event: QCloseEvent | None) -> None:
        self.shutdown()
        super().closeEvent(event)

    # ------------------------------------------------------------------ frame timer
    def _elapsed(self) -> float:
        if self.worker is None:
            return self._elapsed_final
        paused = self._paused_total + (time.monotonic() - self._paused_since if self._paused_since else 0.0)
        return time.monotonic() - self._started_at - paused

    def _on_tick(self) -> None:
        """Frame timer: redraw the orbit view or, less often, the plots, when due.

        At most one of the two per tick, the more overdue one (relative to its period), so they
        are repainted in separate passes and the event loop is never held by both at once.
        Deadlines advance from the due time, not from now, so late ticks do not lower the rate.
        """
        now = time.monotonic()
        frame_late = (now - self._next_frame) / self._frame_period
        plot_late = (now - self._next_plot) / self._plot_period
        if frame_late >= 0 and frame_late >= plot_late:
            self._next_frame = max(self._next_frame + self._frame_period, now - self._frame_period)
            self.orbit.refresh()
        elif plot_late >= 0:
            self._next_plot = max(self._next_plot + self._plot_period, now - self._plot_period)
            self.plots.refresh()
            self._refresh_status()

    def refresh(self) -> None:
        """Pull all buffered data into the views now."""
        self.orbit.refresh()
        self.plots.refresh()
        self._refresh_status()

    def _refresh_status(self) -> None:
        c = self._counters
        if self._mode is None:
            state = "idle"
        elif self._stopping:
            state = "stopping"
        elif self._paused:
            state = "paused"
        else:
            state = "training" if self._mode == MODE_TRAIN else "simulating"
        texts = {"state": state, "epoch": "", "steps": "", "retrains": "", "part2": "", "time": ""}
        if self._mode == MODE_SIMULATE or (self._mode is None and c["step"]):
            texts["steps"] = f"step {c['step']}"
            if np.isfinite(c["time"]):
                texts["time"] = f"t = {c['time']:.5g}"
        elif c["epoch"] is not None or c["accepted"]:
            epoch = "-" if c["epoch"] is None else str(c["epoch"])
            texts["epoch"] = f"epoch {epoch}" + (f" / {c['epochs']}" if c["epochs"] is not None else "")
            texts["steps"] = f"accepted {c['accepted']}"
            texts["retrains"] = f"retrains {c['retrains']}"
            if c["replay"] is not None:
                iteration, passed, size = c["replay"]
                texts["part2"] = f"Part 2 it {iteration}: {passed}/{size} pass"
        seconds = self._elapsed()
        texts["elapsed"] = f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"
        for name, text in texts.items():
            label = self.status_labels[name]
            if label.text() != text:
                label.setText(text)
