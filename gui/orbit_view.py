"""The orbit view: bodies of the current state with fading trails, drawn with pyqtgraph.

Bodies are grouped into at most :data:`~gui.orbit_items.MAX_MASS_CLASSES` mass classes; each class
is one :class:`~gui.orbit_items.BodyDots` item (size and colour grow with log mass) plus :data:`TRAIL_BANDS` line
items for its trails, the older bands fainter than the newer ones (opaque colours blended with
the background, which draw faster than transparent ones). Everything is updated in place with
``setData`` on kept items, so a frame with N = 1,000 bodies and 100-point trails costs a few
numpy operations and one ``drawLines`` call per band. Trail points that the typical body moves
between by less than a pixel are merged when drawing (:meth:`OrbitView._level_of_detail`).

Data arrive through :meth:`OrbitView.push_frame` (cheap: a copy into a ring buffer); the
window's frame timer calls :meth:`OrbitView.refresh`, which redraws only if something arrived.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import pyqtSignal
from PyQt6.QtGui import QPaintEvent
from PyQt6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from .orbit_items import BACKGROUND, BodyDots, MassClass, TrailBuffer, faded, mass_classes, segments

#: projection planes of 3-D systems -> the two coordinate axes shown
PLANES: dict[str, tuple[int, int]] = {"x-y": (0, 1), "x-z": (0, 2), "y-z": (1, 2)}
AXIS_NAMES = "xyz"
TRAIL_BANDS = 5
DEFAULT_TRAIL_LENGTH = 100
MAX_TRAIL_LENGTH = 5000
#: the view re-frames when the bodies leave it or fill less than 1/ZOOM_OUT_FACTOR of it
ZOOM_OUT_FACTOR = 4.0
#: trail points closer than this (px, for the median body) are merged when drawing, at most
#: MAX_STRIDE of them into one segment
MIN_SEGMENT_PX = 1.0
MAX_STRIDE = 8
#: systems with at most this many bodies get thicker, antialiased trails
FEW_BODIES = 50
FRAME_PADDING = 0.15


class OrbitPlot(pg.PlotWidget):
    """A plot widget that counts the frames it actually painted."""

    def __init__(self) -> None:
        super().__init__()
        self.frames_painted = 0

    def paintEvent(self, ev: QPaintEvent) -> None:
        self.frames_painted += 1
        super().paintEvent(ev)


class OrbitView(QWidget):
    """Bodies of one system with fading trails, its simulation time and view options.

    ``system_changed(index)`` fires when the user picks another system of a batch.
    """

    system_changed = pyqtSignal(int)

    def __init__(self, trail_length: int = DEFAULT_TRAIL_LENGTH, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        #: merge sub-pixel trail segments when drawing (False draws every stored point)
        self.level_of_detail = True
        self.plot = OrbitPlot()
        self.plot.setBackground(BACKGROUND)
        self.plot.setAspectLocked(True, ratio=1.0)
        self.plot.setMenuEnabled(False)
        for axis in ("bottom", "left"):
            self.plot.getAxis(axis).enableAutoSIPrefix(False)
        self.viewbox = self.plot.getViewBox()
        self.viewbox.disableAutoRange()
        self.viewbox.sigRangeChangedManually.connect(self._on_manual_range)

        self.system_spin = QSpinBox()
        self.system_spin.setRange(0, 0)
        self.system_spin.setToolTip("Which system of the batch to show")
        self.system_spin.valueChanged.connect(self._on_system_changed)
        self.system_label = QLabel("system")
        self.plane_combo = QComboBox()
        self.plane_combo.addItems(list(PLANES))
        self.plane_combo.setToolTip("Projection plane of a 3-D system")
        self.plane_combo.currentTextChanged.connect(self._on_plane_changed)
        self.trail_spin = QSpinBox()
        self.trail_spin.setRange(0, MAX_TRAIL_LENGTH)
        self.trail_spin.setValue(trail_length)
        self.trail_spin.setSuffix(" pts")
        self.trail_spin.setToolTip("Trail length: number of recent positions drawn per body")
        self.trail_spin.valueChanged.connect(self._on_trail_length_changed)
        self.follow_check = QCheckBox("follow")
        self.follow_check.setChecked(True)
        self.follow_check.setToolTip("Keep all bodies and trails in view (fixed aspect ratio)")
        self.follow_check.toggled.connect(self._on_follow_toggled)
        self.time_label = QLabel("t = -")
        self.time_label.setMinimumWidth(120)
        self.info_label = QLabel("")

        info = QHBoxLayout()
        info.addWidget(self.time_label)
        info.addStretch(1)
        info.addWidget(self.info_label)
        options = QHBoxLayout()
        options.addWidget(self.system_label)
        options.addWidget(self.system_spin)
        options.addWidget(QLabel("plane"))
        options.addWidget(self.plane_combo)
        options.addWidget(QLabel("trail"))
        options.addWidget(self.trail_spin)
        options.addWidget(self.follow_check)
        options.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(info)
        layout.addLayout(options)
        layout.addWidget(self.plot, 1)

        self._classes: list[MassClass] = []
        self._dots: list[BodyDots] = []
        self._trails: list[list[pg.PlotCurveItem]] = []
        self._buffer: TrailBuffer | None = None
        self._time = float("nan")
        self._dim = 2
        self._dirty = False
        self.frames_drawn = 0
        self.stride = 1  # trail thinning of the last redraw (see _level_of_detail)
        self._set_system_choices(1)
        self.plane_combo.setEnabled(False)

    # ------------------------------------------------------------------ configuration
    @property
    def system(self) -> int:
        """Index of the shown system in the batch."""
        return int(self.system_spin.value())

    @property
    def plane(self) -> tuple[int, int]:
        """The two coordinate axes shown."""
        return PLANES[self.plane_combo.currentText()] if self._dim == 3 else (0, 1)

    @property
    def frames_painted(self) -> int:
        return self.plot.frames_painted

    @property
    def n_frames(self) -> int:
        """Positions held in the trail buffer (at most the trail length + 1)."""
        return 0 if self._buffer is None else self._buffer.count

    @property
    def time(self) -> float:
        """Simulation time of the newest frame (NaN before the first)."""
        return self._time

    def set_system(self, mass: np.ndarray, dim: int, n_systems: int = 1) -> None:
        """Prepare for a system of N bodies with masses ``mass`` (N,) in ``dim`` dimensions;
        ``n_systems`` is the batch size B. Clears the trails."""
        mass = np.asarray(mass, dtype=np.float64).reshape(-1)
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3; got {dim}")
        self._dim = dim
        self._set_system_choices(n_systems)
        self.plane_combo.setEnabled(dim == 3)
        for item in [c for band in self._trails for c in band] + self._dots:
            self.plot.removeItem(item)
        self._classes = mass_classes(mass)
        self._dots, self._trails = [], []
        few = len(mass) <= FEW_BODIES
        for cls in self._classes:
            bands = []
            for b in range(TRAIL_BANDS):
                color = faded(cls.color, 0.12 + 0.78 * (b + 1) / TRAIL_BANDS)
                curve = pg.PlotCurveItem(pen=pg.mkPen(color, width=2 if few else 1), antialias=few, connect="pairs")
                curve.setSegmentedLineMode("on")
                curve.setZValue(b)
                self.plot.addItem(curve)
                bands.append(curve)
            dots = BodyDots(cls.color, cls.size)
            dots.setZValue(TRAIL_BANDS + 1)
            self.plot.addItem(dots)
            self._trails.append(bands)
            self._dots.append(dots)
        self._buffer = TrailBuffer(self.trail_spin.value() + 1, len(mass), dim)
        self._time = float("nan")
        bodies = f"{len(mass)} bod{'y' if len(mass) == 1 else 'ies'}, {dim}-D"
        self.info_label.setText(bodies + (f", {n_systems} systems" if n_systems > 1 else ""))
        self._update_axis_labels()
        self._dirty = True

    def clear_trails(self) -> None:
        """Forget the stored positions (e.g. when another system is shown)."""
        if self._buffer is not None:
            self._buffer = TrailBuffer(self._buffer.length, self._buffer.data.shape[1], self._buffer.data.shape[2])
        self._time = float("nan")
        self._dirty = True

    # ------------------------------------------------------------------ data
    def push_frame(self, position: np.ndarray, time: float) -> None:
        """Add the positions (N, D) of the shown system at simulation ``time``; drawn at the next refresh."""
        if self._buffer is None:
            raise RuntimeError("OrbitView.set_system must be called before push_frame")
        self._buffer.push(position)
        self._time = float(time)
        self._dirty = True

    def refresh(self) -> bool:
        """Redraw if frames arrived since the last call; returns whether it redrew."""
        if not self._dirty or self._buffer is None:
            return False
        self._dirty = False
        self.time_label.setText(f"t = {self._time:.6g}" if np.isfinite(self._time) else "t = -")
        frames = self._buffer.ordered()
        if len(frames) == 0:
            for dots in self._dots:
                dots.setData(np.zeros(0), np.zeros(0))
            for bands in self._trails:
                for curve in bands:
                    curve.clear()
            self.frames_drawn += 1
            return True
        a, b = self.plane
        projected = frames[..., [a, b]]  # (M, N, 2)
        if self.follow_check.isChecked():
            self._follow(projected.reshape(-1, 2))
        self.stride = self._level_of_detail(projected) if self.level_of_detail else 1
        if self.stride > 1:  # keep the newest point, thin out the rest evenly
            projected = projected[::-1][:: self.stride][::-1]
        for cls, dots, bands in zip(self._classes, self._dots, self._trails):
            pts = projected[:, cls.bodies]
            dots.setData(pts[-1, :, 0], pts[-1, :, 1])
            n_seg = len(pts) - 1
            for k, curve in enumerate(bands):
                j0, j1 = k * n_seg // TRAIL_BANDS, (k + 1) * n_seg // TRAIL_BANDS
                if j1 <= j0:
                    curve.clear()
                    continue
                x, y = segments(pts[j0: j1 + 1])
                curve.setData(x=x, y=y)
        self.frames_drawn += 1
        return True

    def _level_of_detail(self, projected: np.ndarray) -> int:
        """Trail thinning factor: consecutive trail points that the typical body moves between by
        less than :data:`MIN_SEGMENT_PX` pixels are merged, since drawing them changes no pixel.

        projected: (M, N, 2) trail points in view coordinates, oldest first.
        """
        if len(projected) < 3:
            return 1
        (x0, x1), (y0, y1) = self.viewbox.viewRange()
        width, height = self.viewbox.width(), self.viewbox.height()
        if not (width > 0 and height > 0 and x1 > x0 and y1 > y0):
            return 1
        step = (projected[-1] - projected[-2]) * np.array([width / (x1 - x0), height / (y1 - y0)])
        typical = float(np.median(np.hypot(step[:, 0], step[:, 1])))
        if not np.isfinite(typical):
            return 1
        if typical * MAX_STRIDE <= MIN_SEGMENT_PX:
            return MAX_STRIDE
        return int(np.clip(MIN_SEGMENT_PX // typical, 1, MAX_STRIDE))

    # ------------------------------------------------------------------ view range
    def _follow(self, points: np.ndarray) -> None:
        """Re-frame when ``points`` (P, 2) leave the view or occupy only a small part of it."""
        lo, hi = points.min(axis=0), points.max(axis=0)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # rare: mask the bad points
            finite = points[np.isfinite(points).all(axis=1)]
            if len(finite) == 0:
                return
            lo, hi = finite.min(axis=0), finite.max(axis=0)
        extent = hi - lo
        scale = float(max(extent.max(), np.abs(lo).max() * 1e-3, np.abs(hi).max() * 1e-3, 1e-12))
        (x0, x1), (y0, y1) = self.viewbox.viewRange()
        inside = lo[0] >= x0 and hi[0] <= x1 and lo[1] >= y0 and hi[1] <= y1
        too_big = (x1 - x0) > ZOOM_OUT_FACTOR * max(extent[0], 0.05 * scale) and \
                  (y1 - y0) > ZOOM_OUT_FACTOR * max(extent[1], 0.05 * scale)
        if inside and not too_big:
            return
        pad = FRAME_PADDING * scale
        self.viewbox.setRange(xRange=(lo[0] - pad, hi[0] + pad), yRange=(lo[1] - pad, hi[1] + pad), padding=0)

    def _on_manual_range(self, *_: object) -> None:
        self.follow_check.setChecked(False)

    def _on_follow_toggled(self, checked: bool) -> None:
        if checked:
            self._dirty = True

    # ------------------------------------------------------------------ option handlers
    def _set_system_choices(self, n_systems: int) -> None:
        self.system_spin.blockSignals(True)
        self.system_spin.setRange(0, max(0, n_systems - 1))
        if self.system_spin.value() >= n_systems:
            self.system_spin.setValue(0)
        self.system_spin.blockSignals(False)
        self.system_spin.setVisible(n_systems > 1)
        self.system_label.setVisible(n_systems > 1)

    def _on_system_changed(self, index: int) -> None:
        self.clear_trails()
        self.system_changed.emit(index)

    def _on_plane_changed(self, _: str) -> None:
        self._update_axis_labels()
        self._dirty = True
        if self.follow_check.isChecked() and self._buffer is not None and self._buffer.count:
            a, b = self.plane
            frames = self._buffer.ordered()[..., [a, b]].reshape(-1, 2)
            finite = frames[np.isfinite(frames).all(axis=1)]
            if len(finite):
                self.viewbox.setRange(xRange=(finite[:, 0].min(), finite[:, 0].max()),
                                      yRange=(finite[:, 1].min(), finite[:, 1].max()), padding=FRAME_PADDING)

    def _on_trail_length_changed(self, length: int) -> None:
        if self._buffer is not None:
            self._buffer = self._buffer.resized(length + 1)
            self._dirty = True

    def _update_axis_labels(self) -> None:
        a, b = self.plane
        self.plot.setLabel("bottom", AXIS_NAMES[a])
        self.plot.setLabel("left", AXIS_NAMES[b])
