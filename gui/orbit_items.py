"""The drawing pieces of the orbit view: mass classes, the trail ring buffer, the dot item,
and the colour and segment helpers (see :mod:`gui.orbit_view`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QRectF, Qt
from PyQt6.QtGui import QColor, QPainter, QPen, QPixmap
from PyQt6.QtWidgets import QWidget
from pyqtgraph.Qt.internals import PrimitiveArray

MAX_MASS_CLASSES = 8
BACKGROUND = QColor(0, 0, 0)
#: point diameters (px) of the lightest and heaviest mass class
POINT_SIZE_RANGE = (5.0, 15.0)


@dataclass(frozen=True)
class MassClass:
    """Bodies drawn alike: their indices, point colour and diameter in pixels."""

    bodies: np.ndarray
    color: QColor
    size: float


def mass_classes(mass: np.ndarray, max_classes: int = MAX_MASS_CLASSES) -> list[MassClass]:
    """Group bodies by mass (N,) into at most ``max_classes`` classes.

    Distinct masses (to a relative 1e-9) get a class each when there are few of them; otherwise
    the log-mass range is cut into equal bins. Heavier classes are larger and brighter.
    """
    mass = np.asarray(mass, dtype=np.float64)
    logm = np.log10(mass)
    distinct = np.unique(np.round(logm, 9))
    if len(distinct) <= max_classes:
        labels = np.searchsorted(distinct, np.round(logm, 9))
        centers = distinct
    else:
        edges = np.linspace(logm.min(), logm.max(), max_classes + 1)
        labels = np.clip(np.searchsorted(edges, logm, side="right") - 1, 0, max_classes - 1)
        centers = 0.5 * (edges[:-1] + edges[1:])
    lo, hi = float(centers.min()), float(centers.max())
    cmap = pg.colormap.get("plasma")
    classes = []
    for k, center in enumerate(centers):
        bodies = np.nonzero(labels == k)[0]
        if bodies.size == 0:
            continue
        weight = (center - lo) / (hi - lo) if hi > lo else 1.0
        color = cmap.map(0.45 + 0.55 * weight, mode=pg.ColorMap.QCOLOR)
        size = POINT_SIZE_RANGE[0] + (POINT_SIZE_RANGE[1] - POINT_SIZE_RANGE[0]) * weight
        if hi == lo and len(mass) <= 16:
            size = 0.5 * (POINT_SIZE_RANGE[0] + POINT_SIZE_RANGE[1])
        classes.append(MassClass(bodies, color, float(size)))
    return classes


class TrailBuffer:
    """Ring buffer of the last ``length`` positions of N bodies in D dimensions."""

    def __init__(self, length: int, n_bodies: int, dim: int) -> None:
        if length < 1:
            raise ValueError(f"trail length must be >= 1; got {length}")
        self.data = np.zeros((length, n_bodies, dim), dtype=np.float64)
        self.head = 0  # index the next frame is written to
        self.count = 0

    @property
    def length(self) -> int:
        return int(self.data.shape[0])

    def push(self, position: np.ndarray) -> None:
        """Append positions (N, D)."""
        self.data[self.head] = position
        self.head = (self.head + 1) % self.length
        self.count = min(self.count + 1, self.length)

    def ordered(self) -> np.ndarray:
        """The stored positions, oldest first, (count, N, D)."""
        if self.count < self.length:
            return self.data[: self.count]
        return np.roll(self.data, -self.head, axis=0)

    def resized(self, length: int) -> TrailBuffer:
        """A buffer of a new length holding the newest frames of this one."""
        out = TrailBuffer(length, self.data.shape[1], self.data.shape[2])
        for frame in self.ordered()[-length:]:
            out.push(frame)
        return out


class BodyDots(pg.GraphicsObject):
    """Bodies as round dots of a fixed size in pixels, with a dark rim.

    One antialiased dot is rendered into a pixmap once; a frame stamps it at every position
    with a single ``QPainter.drawPixmapFragments`` call, so 10^3 bodies cost no per-body
    Python work (a scatter item styles each point in Python) and no per-body rasterisation.
    """

    def __init__(self, color: QColor, size: float) -> None:
        super().__init__()
        self.size = float(size)
        self.color = QColor(color)
        self._x = self._y = np.zeros(0)
        self._bounds = QRectF()
        self._fragments = PrimitiveArray(QPainter.PixmapFragment, 10)
        self._pixmap = QPixmap()
        self._pixmap_ratio = 0.0

    def _render(self, ratio: float) -> None:
        """Draw the dot into a pixmap for a device pixel ratio ``ratio``."""
        side = int(np.ceil((self.size + 2.0) * ratio))
        pixmap = QPixmap(side, side)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setPen(QPen(QColor(20, 20, 20), ratio))
        painter.setBrush(self.color)
        inset = 0.5 * (side - self.size * ratio)
        painter.drawEllipse(QRectF(inset, inset, self.size * ratio, self.size * ratio))
        painter.end()
        self._pixmap, self._pixmap_ratio = pixmap, ratio

    def setData(self, x: np.ndarray, y: np.ndarray) -> None:
        """Positions of the dots, x and y of shape (n,) in view coordinates."""
        self.prepareGeometryChange()
        self._x, self._y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        finite = np.isfinite(self._x) & np.isfinite(self._y)
        if finite.any():
            x0, x1 = self._x[finite].min(), self._x[finite].max()
            y0, y1 = self._y[finite].min(), self._y[finite].max()
            self._bounds = QRectF(x0, y0, x1 - x0, y1 - y0)
        else:
            self._bounds = QRectF()
        self.update()

    def getData(self) -> tuple[np.ndarray, np.ndarray]:
        return self._x, self._y

    def boundingRect(self) -> QRectF:
        if not len(self._x):
            return QRectF()
        pad = 0.5 * (self.size + 2) * max(self.pixelWidth(), self.pixelHeight())
        return self._bounds.adjusted(-pad, -pad, pad, pad)

    def paint(self, painter: QPainter, option: object = None, widget: QWidget | None = None) -> None:
        finite = np.isfinite(self._x) & np.isfinite(self._y)
        if not finite.any():
            return
        ratio = widget.devicePixelRatioF() if widget is not None else 1.0
        if ratio != self._pixmap_ratio:
            self._render(ratio)
        device = pg.functions.transformCoordinates(painter.transform(), np.vstack([self._x[finite], self._y[finite]]))
        device = np.clip(device, -2.0**30, 2.0**30)  # Qt misbehaves far outside the int range
        side = self._pixmap.width()
        self._fragments.resize(device.shape[1])
        frags = self._fragments.ndarray()
        frags[:, 0:2] = device.T  # centre of each stamp, device pixels
        frags[:, 2:6] = (0.0, 0.0, side, side)  # source rect in the pixmap
        frags[:, 6:10] = (1.0 / ratio, 1.0 / ratio, 0.0, 1.0)  # scale x, scale y, rotation, opacity
        painter.save()
        painter.resetTransform()
        painter.drawPixmapFragments(*self._fragments.drawargs(), self._pixmap)  # type: ignore[call-arg]
        painter.restore()


def faded(color: QColor, weight: float, background: QColor = BACKGROUND) -> QColor:
    """``color`` blended with the background: opaque, so drawing needs no alpha blending
    (about a third faster for 10^5 trail segments)."""
    mix = [weight * c + (1.0 - weight) * b for c, b in zip(color.getRgbF()[:3], background.getRgbF()[:3])]
    return QColor.fromRgbF(*mix)


def segments(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line segments joining consecutive trail points, as x and y for ``connect="pairs"``.

    points: (M, n, 2) oldest first -> x, y of shape (2 (M-1) n,).
    """
    pairs = np.stack([points[:-1], points[1:]], axis=2)  # (M-1, n, 2 ends, 2 coords)
    flat = pairs.reshape(-1, 2)
    return flat[:, 0], flat[:, 1]
