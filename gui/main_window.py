"""The main window: controls on the left, the orbit view and the live plots on the right, a
status bar with the run's counters, and an error banner for failures.

Runs (training or simulation playback) belong to the window's :class:`~gui.session.RunSession`
and execute in their own process; their data reach the window only as signals of the session's
bridge, whose slots append to buffers. A single timer (:class:`~gui.redraw.RedrawTimer`) pulls
the buffered data into the views: the orbit view at most :data:`FRAME_RATE` times per second, the
plots and the status bar at most :data:`PLOT_RATE` times per second, so redraws are throttled
however fast the run produces data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtGui import QCloseEvent, QShowEvent
from PyQt6.QtWidgets import QFileDialog, QLabel, QMainWindow, QSplitter, QStatusBar, QVBoxLayout, QWidget

from nbtoolkit.errors import NBToolkitError
from nbtoolkit.events import StepAccepted
from nbtoolkit.plugin_manager import PluginHost, get_host
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.state import NBodyState

from .banner import ErrorBanner
from .controls import ControlPanel
from .jobs import PlaybackFrame, PlaybackJob, RunOutcome, TrainingJob
from .modes import MODE_SIMULATE, MODE_TRAIN
from .orbit_view import OrbitView
from .plots import LivePlots
from .redraw import FRAME_RATE, PLOT_RATE, RedrawTimer
from .session import RunSession, RunState
from .status import FIELDS as STATUS_FIELDS
from .status import RunCounters

log = logging.getLogger(__name__)

#: errors a user can cause while setting up a run (shown in the banner, never raised)
SETUP_ERRORS = (NBToolkitError, ValueError, TypeError, KeyError, OSError)


class MainWindow(QMainWindow):
    """The viewer. Public slots (:meth:`start`, :meth:`toggle_pause`, :meth:`stop`,
    :meth:`save_checkpoint`) are what the buttons call; tests and scripts may call them too.

    Signals, all emitted on the GUI thread: ``run_started(mode)``, ``run_finished(RunOutcome)``
    once the run has ended, ``epoch_finished(EpochEnd)``, ``frames_received(int)``
    (simulation steps received), ``error_shown(str)``.
    """

    run_started = pyqtSignal(str)
    run_finished = pyqtSignal(object)
    epoch_finished = pyqtSignal(object)
    frames_received = pyqtSignal(int)
    error_shown = pyqtSignal(str)

    def __init__(self, host: PluginHost | None = None, *, frame_rate: float = FRAME_RATE,
                 plot_rate: float = PLOT_RATE, isolation: str = "process", parent: QWidget | None = None) -> None:
        """``frame_rate`` and ``plot_rate``: most redraws per second of the orbit view and of the plots;
        ``isolation``: where runs execute, "process" or "thread" (see :class:`~gui.worker.RunWorker`)."""
        super().__init__(parent)
        self.host = host if host is not None else get_host()
        self.setWindowTitle("nbtoolkit viewer")
        self.controls = ControlPanel(self.host)
        self.orbit = OrbitView()
        self.plots = LivePlots()
        self.banner = ErrorBanner()
        self.session = RunSession(self.host, isolation=isolation, parent=self)
        self._layout()

        self.counters = RunCounters()
        self._mass = np.ones((1, 1))  # (B, N) of the system shown
        self._latest_position = np.zeros((1, 1, 2))  # (B, N, D) newest known positions
        self._latest_time = np.zeros(1)  # (B,)
        self._connect()

        self.frame_timer = RedrawTimer(self.orbit.refresh, self._refresh_plots, frame_rate=frame_rate,
                                       plot_rate=plot_rate, parent=self)
        self.frame_timer.start()

        self.resize(1400, 860)
        self.preview_system()
        self._update_controls()
        self.refresh()

    def _layout(self) -> None:
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
        self.status_labels = {name: QLabel() for name in STATUS_FIELDS}
        for label in self.status_labels.values():
            label.setMinimumWidth(90)
            self._status.addPermanentWidget(label)

    def _connect(self) -> None:
        self.controls.start_clicked.connect(self.start)
        self.controls.pause_clicked.connect(self.toggle_pause)
        self.controls.stop_clicked.connect(self.stop)
        self.controls.save_clicked.connect(self._ask_save_checkpoint)
        self.controls.speed_changed.connect(self.session.set_speed)
        self.controls.system_form.preset_combo.currentTextChanged.connect(lambda _: self.preview_system())
        self.orbit.system_changed.connect(self._show_orbit_system)
        bridge = self.session.bridge
        bridge.fit_started.connect(self.counters.fit_started)
        bridge.step_accepted.connect(self._on_step_accepted)
        bridge.step_accepted.connect(self.counters.step_accepted)
        bridge.step_rejected.connect(self.plots.add_rejected)
        bridge.step_rejected.connect(self.counters.step_rejected)
        bridge.replay_iteration.connect(self.counters.replay_iteration)
        bridge.epoch_ended.connect(self.plots.add_epoch)
        bridge.epoch_ended.connect(self.counters.epoch_ended)
        bridge.epoch_ended.connect(self.epoch_finished)
        bridge.fit_ended.connect(self.counters.fit_ended)
        bridge.frames.connect(self._on_frames)
        bridge.notice.connect(lambda message: self._status.showMessage(message, 10000))
        bridge.checkpoint_saved.connect(lambda path: self._status.showMessage(f"checkpoint saved to {path}", 10000))
        bridge.checkpoint_failed.connect(lambda path, message: self.show_error(f"Could not save checkpoint '{path}'",
                                                                                message))
        self.session.state_changed.connect(lambda _: self._update_controls())
        self.session.finished.connect(self._on_run_finished)

    # ------------------------------------------------------------------ state
    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the run has ended."""
        return self.session.state is not RunState.IDLE

    @property
    def paused(self) -> bool:
        return self.session.state is RunState.PAUSED

    @property
    def mode(self) -> str | None:
        """"train" or "simulate" while a run is active, else None."""
        return self.session.mode

    @property
    def last_outcome(self) -> RunOutcome | None:
        return self.session.last_outcome

    @property
    def trained_predictor(self) -> DtPredictor | None:
        """The model the last training in this window produced (None before)."""
        return self.session.trained_model

    def error_text(self) -> str:
        """The error banner's text ("" when no error is shown)."""
        return "" if self.banner.isHidden() else self.banner.text()

    def status_text(self) -> str:
        """The status bar's counters as one line."""
        return "  |  ".join(label.text() for label in self.status_labels.values() if label.text())

    def _update_controls(self) -> None:
        self.controls.set_run_state(self.session.mode, paused=self.paused, can_save=self.session.can_save)

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
            state = self.controls.system_form.build_system().state
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
            system = self.controls.system_form.build_system()
            reference_name = self.controls.reference_name()
            reference = self.host.predictors.create(reference_name) if reference_name else None
            job = TrainingJob(config, system, reference=reference)
        except SETUP_ERRORS as exc:
            self.show_error("Cannot start training", str(exc))
            return False
        return self._launch(MODE_TRAIN, job, threshold=config.energy_threshold, band=(config.E_lower, config.E_upper),
                            reference_name=reference_name)

    def start_simulation(self) -> bool:
        """Play the chosen preset with the model just trained or a checkpoint; False if it could not start."""
        if self.is_running:
            return False
        try:
            settings = self.controls.simulation_settings()
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
            job = PlaybackJob(self.controls.system_form.build_system().state, predictor,
                              self.controls.integrator_combo.currentText(), steps=settings.steps,
                              speed=settings.speed, guard_threshold=settings.guard_threshold,
                              reference=self.host.predictors.create(reference_name) if reference_name else None,
                              integrator_options=self.controls.integrator_options(), gate=settings.gate,
                              field_name=settings.field_name, field_options=settings.field_options)
        except SETUP_ERRORS as exc:
            self.show_error("Cannot start simulation", str(exc))
            return False
        return self._launch(MODE_SIMULATE, job, threshold=settings.guard_threshold, band=None,
                            reference_name=reference_name)

    def _launch(self, mode: str, job: TrainingJob | PlaybackJob, *, threshold: float | None,
                band: tuple[float, float] | None, reference_name: str | None) -> bool:
        what = "training" if mode == MODE_TRAIN else "simulation"
        try:
            self.session.start(mode, job)
        except Exception as exc:  # e.g. a model that cannot be sent to the run's process
            self.show_error(f"Cannot start {what}", f"{type(exc).__name__}: {exc}")
            return False
        self.banner.hide()
        self.counters.reset()
        self.plots.reset(mode, n_systems=job.state.batch_size, energy_threshold=threshold, band=band,
                         reference_name=reference_name)
        self._show_initial_state(job.state)
        self._status.showMessage(f"{what}...", 3000)
        self.run_started.emit(mode)
        return True

    # ------------------------------------------------------------------ run control
    def toggle_pause(self) -> None:
        self.session.toggle_pause()

    def pause(self) -> None:
        """Pause the run at its next step boundary."""
        self.session.pause()

    def resume(self) -> None:
        self.session.resume()

    def stop(self) -> None:
        """Stop the run at its next step boundary (the controls re-enable once it has ended)."""
        if self.session.stop():
            self._status.showMessage("stopping...", 3000)

    def save_checkpoint(self, path: str | Path) -> bool:
        """Save the trained (or training) model to ``path``; the result is reported in the status
        bar (or the error banner). Returns False if there is nothing to save."""
        if not self.session.save_checkpoint(str(path)):
            self.show_error("Cannot save checkpoint", "no model has been trained in this window")
            return False
        return True

    def _ask_save_checkpoint(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save checkpoint", "checkpoint.pt",
                                              "Checkpoints (*.pt);;All files (*)")
        if path:
            self.save_checkpoint(path)

    # ------------------------------------------------------------------ run messages (GUI thread)
    def _on_step_accepted(self, event: StepAccepted, reference: np.ndarray | None) -> None:
        self.plots.add_accepted(event, reference)
        systems = np.asarray(event.systems)
        self._latest_position[systems] = event.position
        self._latest_time[systems] = event.time
        hits = np.nonzero(systems == self.orbit.system)[0]
        if hits.size:
            j = int(hits[0])
            self.orbit.push_frame(event.position[j], float(event.time[j]))

    def _on_frames(self, frames: list[PlaybackFrame]) -> None:
        if not frames:
            return
        self.plots.add_frames(frames)
        s = self.orbit.system
        self._latest_position[:] = frames[-1].position
        self._latest_time[:] = frames[-1].time
        for frame in frames:
            self.orbit.push_frame(frame.position[s], float(frame.time[s]))
        self.counters.frames(frames, s)
        self.frames_received.emit(len(frames))

    def _on_run_finished(self, mode: str, outcome: RunOutcome) -> None:
        what = "Training" if mode == MODE_TRAIN else "Simulation"
        if outcome.kind == "failed":
            self.show_error(f"{what} failed", outcome.error or "unknown error", outcome.details)
        else:
            self._status.showMessage(f"{what} {outcome.kind}", 10000)
        self.refresh()
        self._update_controls()
        self.run_finished.emit(outcome)

    # ------------------------------------------------------------------ window events
    def shutdown(self) -> None:
        """Stop any run and close its process (waiting a few seconds at most); safe to call twice."""
        self.frame_timer.stop()
        self.session.shutdown()

    def showEvent(self, event: QShowEvent | None) -> None:
        super().showEvent(event)
        if self._split_evenly:  # give the orbit view and the plots half the width each
            self._split_evenly = False
            width = sum(self._views.sizes())
            self._views.setSizes([width // 2, width - width // 2])

    def closeEvent(self, event: QCloseEvent | None) -> None:
        self.shutdown()
        super().closeEvent(event)

    # ------------------------------------------------------------------ redraws
    def refresh(self) -> None:
        """Pull all buffered data into the views now."""
        self.orbit.refresh()
        self._refresh_plots()

    def _refresh_plots(self) -> None:
        self.plots.refresh()
        self._refresh_status()

    def _refresh_status(self) -> None:
        texts = self.counters.texts(self.session.state, self.session.mode, self.session.elapsed())
        for name, text in texts.items():
            label = self.status_labels[name]
            if label.text() != text:
                label.setText(text)
