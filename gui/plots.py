"""Live plots of a run, updated in place.

Per accepted step (x = step number 1, 2, ... of the shown system, counted across epochs):

* |dE/E| on a log axis, with the energy threshold as a dashed line, the loss band
  [E_lower, E_upper] shaded, and the rejected attempts as faint markers at the step they were
  tried for (so the accept / reject loop is visible); in simulation mode also the drift
  |E - E0| / |E0| since the start;
* dt on a log axis, with a classical rule's dt for the same states as a reference;
* retrain iterations (rejected attempts) per accepted step, or guard halvings when simulating.

Per epoch: Part 2 (replay) iterations, the pass rate and the loss of the last minibatch.

Incoming events only append to numpy buffers (:class:`~gui.columns.Columns`); the curve items are created
once and :meth:`LivePlots.refresh`, called by the window's frame timer, pushes the buffers to
them with ``setData`` when something changed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import QVBoxLayout, QWidget

from nbtoolkit.events import EpochEnd, StepAccepted, StepRejected

from .columns import Columns
from .jobs import PlaybackFrame
from .modes import MODE_SIMULATE, MODE_TRAIN, check_mode
from .plot_axes import REL_DE_DISPLAY_RANGE, DecadeAxis, clip_rel, decades, nice_ceiling

#: curves of |dE/E| values, drawn clipped to REL_DE_DISPLAY_RANGE
CLIPPED_CURVES = ("rel_dE", "rejected_rel_dE", "drift")
#: the step axis starts at [0, STEP_AXIS_MIN]
STEP_AXIS_MIN = 20.0


class LivePlots(QWidget):
    """The live per-step and per-epoch plots of a training run or a simulation playback."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.step_view = pg.GraphicsLayoutWidget()
        self.epoch_view = pg.GraphicsLayoutWidget()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.step_view, 3)
        layout.addWidget(self.epoch_view, 1)

        self.err_plot = self.step_view.addPlot(row=0, col=0, title="|dE/E| per accepted step",
                                               axisItems={"left": DecadeAxis("left")})
        self.dt_plot = self.step_view.addPlot(row=1, col=0, title="dt per accepted step",
                                              axisItems={"left": DecadeAxis("left")})
        self.retrain_plot = self.step_view.addPlot(row=2, col=0, title="retrains per accepted step")
        self.iter_plot = self.epoch_view.addPlot(row=0, col=0, title="Part 2 iterations")
        self.pass_plot = self.epoch_view.addPlot(row=0, col=1, title="pass rate")
        self.loss_plot = self.epoch_view.addPlot(row=0, col=2, title="loss")
        for plot in (self.err_plot, self.dt_plot):
            plot.setLogMode(y=True)
        # no grids: a grid is drawn by the axes, which then repaint with every new point
        for plot in (self.err_plot, self.dt_plot, self.retrain_plot, self.iter_plot, self.pass_plot, self.loss_plot):
            plot.setMenuEnabled(False)
        self.dt_plot.setXLink(self.err_plot)
        self.retrain_plot.setXLink(self.err_plot)
        self.err_plot.hideAxis("bottom")  # the three step plots share the bottom axis
        self.dt_plot.hideAxis("bottom")
        self.err_plot.enableAutoRange(x=False)  # grown in steps by _grow_step_axis instead
        self.retrain_plot.setLabel("bottom", "accepted step")
        self.iter_plot.setLabel("bottom", "epoch")
        self.pass_plot.setLabel("bottom", "epoch")
        self.loss_plot.setLabel("bottom", "epoch")
        self.pass_plot.setYRange(0.0, 1.05)

        for plot in (self.err_plot, self.dt_plot):  # legends in the title row, off the data
            plot.titleLabel.setAttr("justify", "left")
            plot.setTitle(plot.titleLabel.text)
            legend = plot.addLegend(colCount=3, labelTextSize="8pt", verSpacing=-6, horSpacing=12)
            legend.setParentItem(plot)
            legend.anchor(itemPos=(1, 0), parentPos=(1, 0), offset=(-4, -2))
        self.curves: dict[str, pg.PlotDataItem] = {
            "rel_dE": self._line(self.err_plot, (90, 200, 255), "accepted"),
            "rejected_rel_dE": self._markers(self.err_plot, (255, 90, 90, 110), "rejected"),
            "drift": self._line(self.err_plot, (255, 210, 90), "|E-E0|/|E0|"),
            "dt": self._line(self.dt_plot, (90, 200, 255), "learned dt"),
            "rejected_dt": self._markers(self.dt_plot, (255, 90, 90, 110), "rejected dt"),
            "reference_dt": self._line(self.dt_plot, (200, 200, 200), "reference", style=Qt.PenStyle.DashLine),
            "retrains": self._line(self.retrain_plot, (255, 160, 90), None),
            "replay_iterations": self._epoch_curve(self.iter_plot, (120, 220, 120)),
            "pass_rate": self._epoch_curve(self.pass_plot, (120, 220, 120)),
            "loss": self._epoch_curve(self.loss_plot, (255, 160, 90)),
        }
        for name in ("rejected_rel_dE", "rejected_dt"):
            self.curves[name].setDownsampling(auto=True, method="peak")
            self.curves[name].setClipToView(True)
        self.threshold_line = pg.InfiniteLine(angle=0, movable=False,
                                              pen=pg.mkPen((255, 120, 60), width=1.5, style=Qt.PenStyle.DashLine),
                                              label="threshold", labelOpts={"position": 0.12, "color": (255, 120, 60)})
        self.band = pg.LinearRegionItem(orientation="horizontal", movable=False, brush=pg.mkBrush(120, 220, 120, 25),
                                        pen=pg.mkPen(None))
        self.err_plot.addItem(self.band, ignoreBounds=True)
        self.err_plot.addItem(self.threshold_line)  # auto-range keeps the threshold in view

        self.accepted = Columns(("system", "step", "rel_dE", "dt", "retrains"))
        self.rejected = Columns(("system", "step", "rel_dE", "dt"))
        self.reference = Columns(("system", "step", "dt"))
        self.drift = Columns(("system", "step", "drift"))
        self.epochs = Columns(("epoch", "replay_iterations", "pass_rate", "loss"))
        self.mode = MODE_TRAIN
        self.system = 0
        self._next_step = np.ones(1, dtype=np.int64)
        self._steps_dirty = False
        self._epochs_dirty = False
        self._drawn: dict[str, tuple[int, int]] = {}  # curve -> (system, points) last pushed to it
        self._y_spans: dict[int, tuple[float, float]] = {}  # id(plot) -> y range set by _fit_y
        self._threshold = np.zeros(0)  # the energy threshold, kept in the |dE/E| range
        self.redraws = 0
        self.reset(MODE_TRAIN, n_systems=1, energy_threshold=None)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _line(plot: pg.PlotItem, color: tuple[int, ...], name: str | None,
              style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> pg.PlotDataItem:
        """A per-step curve that stays cheap to draw however long the run: a one-pixel (cosmetic)
        pen drawn as separate segments, about two points per pixel column (the min and max of
        the steps it covers). A wider pen or a path costs 4-40 times more on a noisy curve of
        10^5 steps."""
        curve = plot.plot(pen=pg.mkPen(color, width=1, style=style), name=name, autoDownsampleFactor=1.0)
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        curve.curve.setSegmentedLineMode("on")
        return curve

    @staticmethod
    def _markers(plot: pg.PlotItem, color: tuple[int, ...], name: str) -> pg.PlotDataItem:
        return plot.plot(pen=None, symbol="o", symbolSize=4, symbolPen=None, symbolBrush=pg.mkBrush(color), name=name)

    @staticmethod
    def _epoch_curve(plot: pg.PlotItem, color: tuple[int, ...]) -> pg.PlotDataItem:
        return plot.plot(pen=pg.mkPen(color, width=1.2), symbol="o", symbolSize=6, symbolPen=None,
                         symbolBrush=pg.mkBrush(color))

    # ------------------------------------------------------------------ run setup
    def reset(self, mode: str, *, n_systems: int, energy_threshold: float | None,
              band: tuple[float, float] | None = None, reference_name: str | None = None) -> None:
        """Forget all data and prepare for a run of ``n_systems`` systems.

        ``mode`` is "train" or "simulate"; ``energy_threshold`` (None hides the line) and
        ``band`` (E_lower, E_upper) are drawn on the |dE/E| plot; ``reference_name`` labels the
        reference dt curve (None hides it).
        """
        self.mode = check_mode(mode)
        for table in (self.accepted, self.rejected, self.reference, self.drift, self.epochs):
            table.clear()
        self._next_step = np.ones(max(1, n_systems), dtype=np.int64)
        self.system = min(self.system, max(1, n_systems) - 1)
        self.threshold_line.setVisible(energy_threshold is not None)
        if energy_threshold is not None:
            self.threshold_line.setValue(float(np.log10(energy_threshold)))
        self.band.setVisible(band is not None)
        if band is not None:
            self.band.setRegion((float(np.log10(band[0])), float(np.log10(band[1]))))
        reference = self.curves["reference_dt"]
        reference.opts["name"] = f"{reference_name} (reference)" if reference_name else "reference"
        self._show_in_legend(self.dt_plot, reference, False)
        self._show_in_legend(self.dt_plot, reference, reference_name is not None)
        reference.setVisible(reference_name is not None)
        simulate = mode == MODE_SIMULATE
        self.err_plot.setTitle("|dE/E| per step" if simulate else "|dE/E| per accepted step")
        self.dt_plot.setTitle("dt per step" if simulate else "dt per accepted step")
        self.retrain_plot.setTitle("guard halvings per step" if simulate else "retrains per accepted step")
        self.retrain_plot.setLabel("bottom", "step" if simulate else "accepted step")
        self.curves["drift"].setVisible(simulate)
        self._show_in_legend(self.err_plot, self.curves["drift"], simulate)
        self._show_in_legend(self.err_plot, self.curves["rejected_rel_dE"], not simulate)
        self._show_in_legend(self.dt_plot, self.curves["rejected_dt"], not simulate)
        self.epoch_view.setVisible(not simulate)
        for curve in self.curves.values():
            curve.setData([], [])
        self._drawn = {}
        self._y_spans = {}
        self._threshold = np.array([] if energy_threshold is None else [energy_threshold])
        self._steps_dirty = self._epochs_dirty = True

    @staticmethod
    def _show_in_legend(plot: pg.PlotItem, curve: pg.PlotDataItem, shown: bool) -> None:
        legend = plot.legend
        if legend is None:
            return
        listed = legend.getLabel(curve) is not None
        if shown and not listed:
            legend.addItem(curve, curve.name())
        elif listed and not shown:
            legend.removeItem(curve)

    def show_system(self, system: int) -> None:
        """Show the per-step data of system ``system`` of the batch."""
        self.system = int(system)
        self._steps_dirty = True

    # ------------------------------------------------------------------ data in
    def _steps_for(self, systems: np.ndarray) -> np.ndarray:
        """Current step numbers (1-based) of ``systems``, growing the counters if needed."""
        top = int(systems.max()) + 1 if systems.size else 0
        if top > len(self._next_step):
            self._next_step = np.concatenate([self._next_step, np.ones(top - len(self._next_step), dtype=np.int64)])
        return self._next_step[systems]

    def add_accepted(self, event: StepAccepted, reference_dt: np.ndarray | None = None) -> None:
        """Record a Part 1 acceptance; ``reference_dt`` (k,) is the classical dt of the states after it."""
        systems = np.asarray(event.systems, dtype=np.int64)
        steps = self._steps_for(systems)
        self.accepted.append(system=systems, step=steps, rel_dE=event.rel_dE, dt=event.dt, retrains=event.retrains)
        if reference_dt is not None:
            self.reference.append(system=systems, step=steps + 1, dt=reference_dt)
        self._next_step[systems] += 1
        self._steps_dirty = True

    def add_rejected(self, event: StepRejected) -> None:
        """Record a rejected Part 1 attempt (drawn at the step it was tried for)."""
        systems = np.asarray(event.systems, dtype=np.int64)
        self.rejected.append(system=systems, step=self._steps_for(systems), rel_dE=event.rel_dE, dt=event.dt)
        self._steps_dirty = True

    def add_epoch(self, event: EpochEnd) -> None:
        """Record the Part 2 metrics of a finished epoch."""
        self.epochs.append(epoch=event.epoch + 1, replay_iterations=event.replay_iterations,
                           pass_rate=event.pass_rate, loss=event.loss)
        self._epochs_dirty = True

    def add_frames(self, frames: Iterable[PlaybackFrame]) -> None:
        """Record simulation steps (every system of each frame)."""
        for frame in frames:
            b = len(frame.dt)
            systems = np.arange(b)
            steps = np.full(b, frame.step)
            self.accepted.append(system=systems, step=steps, rel_dE=frame.rel_dE, dt=frame.dt, retrains=frame.halvings)
            self.drift.append(system=systems, step=steps, drift=frame.drift)
            if frame.reference_dt is not None:
                self.reference.append(system=systems, step=steps, dt=frame.reference_dt)
            self._steps_dirty = True

    # ------------------------------------------------------------------ data out
    def series(self, system: int | None = None) -> dict[str, np.ndarray]:
        """The recorded per-step data of one system (default: the shown one), unclipped.

        Keys: step, rel_dE, dt, retrains (accepted steps); rejected_step, rejected_rel_dE,
        rejected_dt; reference_step, reference_dt; drift_step, drift.
        """
        s = self.system if system is None else system
        acc = self.accepted.where("system", s)
        rej = self.rejected.where("system", s)
        ref = self.reference.where("system", s)
        dr = self.drift.where("system", s)
        return {
            "step": acc["step"], "rel_dE": acc["rel_dE"], "dt": acc["dt"], "retrains": acc["retrains"],
            "rejected_step": rej["step"], "rejected_rel_dE": rej["rel_dE"], "rejected_dt": rej["dt"],
            "reference_step": ref["step"], "reference_dt": ref["dt"], "drift_step": dr["step"], "drift": dr["drift"],
        }

    def epoch_series(self) -> dict[str, np.ndarray]:
        """Per-epoch data: epoch (1-based), replay_iterations, pass_rate, loss."""
        return {name: self.epochs[name].copy() for name in self.epochs.names}

    # ------------------------------------------------------------------ drawing
    def _grow_step_axis(self, last_step: float) -> None:
        """Show steps [0, X] with X a round number ahead of the data, so the axes are redrawn
        only when X grows (about every time the step count grows by 25 %), not for every point."""
        (_, x1), _ = self.err_plot.viewRange()
        if last_step <= x1 and (x1 <= 4 * max(last_step, STEP_AXIS_MIN) or x1 <= STEP_AXIS_MIN):
            return
        target = max(STEP_AXIS_MIN, 1.25 * last_step)
        magnitude = 10 ** np.floor(np.log10(target))
        nice = next(m * magnitude for m in (1, 1.5, 2, 3, 4, 5, 6, 8, 10) if m * magnitude >= target)
        self.err_plot.setXRange(0, nice, padding=0.02)

    def _fit_y(self, plot: pg.PlotItem, span: tuple[float, float] | None) -> None:
        """Set the y range to ``span`` if it changed (None: no data, keep the range); ranges are
        whole decades or round numbers, so the axes are redrawn only when the data outgrow them."""
        if span is None or self._y_spans.get(id(plot)) == span:
            return
        self._y_spans[id(plot)] = span
        plot.setYRange(*span, padding=0.05)

    def refresh(self) -> bool:
        """Push new data to the curve items; returns whether anything was redrawn."""
        redrew = False
        if self._steps_dirty:
            self._steps_dirty = False
            data = self.series()
            shown = {  # curve -> (x, y); curves whose data did not change are left alone
                "rel_dE": (data["step"], data["rel_dE"]), "dt": (data["step"], data["dt"]),
                "retrains": (data["step"], data["retrains"]),
                "rejected_rel_dE": (data["rejected_step"], data["rejected_rel_dE"]),
                "rejected_dt": (data["rejected_step"], data["rejected_dt"]),
                "reference_dt": (data["reference_step"], data["reference_dt"]),
                "drift": (data["drift_step"], data["drift"]),
            }
            for name, (x, y) in shown.items():
                key = (self.system, len(x))
                if self._drawn.get(name) == key:
                    continue
                self._drawn[name] = key
                self.curves[name].setData(x, clip_rel(y) if name in CLIPPED_CURVES else y)
            self._grow_step_axis(float(data["step"][-1]) if len(data["step"]) else 0.0)
            err = np.concatenate([clip_rel(data["rel_dE"]), clip_rel(data["rejected_rel_dE"]),
                                  clip_rel(data["drift"]), self._threshold])
            self._fit_y(self.err_plot, decades(err))
            self._fit_y(self.dt_plot, decades(np.concatenate([data["dt"], data["rejected_dt"], data["reference_dt"]])))
            self._fit_y(self.retrain_plot, (0.0, nice_ceiling(float(data["retrains"].max(initial=0.0)))))
            redrew = True
        if self._epochs_dirty:
            self._epochs_dirty = False
            ep = self.epochs
            self.curves["replay_iterations"].setData(ep["epoch"], ep["replay_iterations"])
            self.curves["pass_rate"].setData(ep["epoch"], ep["pass_rate"])
            self.curves["loss"].setData(ep["epoch"], ep["loss"])
            redrew = True
        if redrew:
            self.redraws += 1
        return redrew


__all__ = ["REL_DE_DISPLAY_RANGE", "DecadeAxis", "LivePlots"]  # the axis helpers live in .plot_axes
