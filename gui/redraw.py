"""When the window's views redraw: at most :data:`FRAME_RATE` orbit-view frames and :data:`PLOT_RATE`
plot and status-bar redraws per second, however fast a run produces data."""

from __future__ import annotations

import time
from collections.abc import Callable

from PyQt6.QtCore import QObject, Qt, QTimer

#: orbit-view redraws per second at most
FRAME_RATE = 60.0
#: plot and status-bar redraws per second at most (their axes are costly to redraw)
PLOT_RATE = 10.0
#: the frame timer ticks this often (ms) and redraws what is due; a short tick keeps the frame
#: rate close to FRAME_RATE when a tick comes late because the event loop was busy
TICK_MS = 5


class RedrawTimer(QTimer):
    """A precise timer that calls ``draw_frame`` at most ``frame_rate`` times per second and
    ``draw_plots`` at most ``plot_rate`` times per second; it runs once :meth:`start` is called."""

    def __init__(self, draw_frame: Callable[[], object], draw_plots: Callable[[], object], *,
                 frame_rate: float = FRAME_RATE, plot_rate: float = PLOT_RATE, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if not (frame_rate > 0 and plot_rate > 0):
            raise ValueError(f"frame_rate and plot_rate must be > 0; got {frame_rate}, {plot_rate}")
        self._draw_frame, self._draw_plots = draw_frame, draw_plots
        self._frame_period = 1.0 / frame_rate
        self._plot_period = 1.0 / plot_rate
        self._next_frame = self._next_plot = 0.0
        self.setTimerType(Qt.TimerType.PreciseTimer)
        self.setInterval(TICK_MS)
        self.timeout.connect(self._on_tick)

    def _on_tick(self) -> None:
        """Redraw the orbit view or, less often, the plots, when due.

        At most one of the two per tick, the more overdue one (relative to its period), so they
        are repainted in separate passes and the event loop is never held by both at once.
        Deadlines advance from the due time, not from now, so late ticks do not lower the rate.
        """
        now = time.monotonic()
        frame_late = (now - self._next_frame) / self._frame_period
        plot_late = (now - self._next_plot) / self._plot_period
        if frame_late >= 0 and frame_late >= plot_late:
            self._next_frame = max(self._next_frame + self._frame_period, now - self._frame_period)
            self._draw_frame()
        elif plot_late >= 0:
            self._next_plot = max(self._next_plot + self._plot_period, now - self._plot_period)
            self._draw_plots()
