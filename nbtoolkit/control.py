"""Cooperative pause / stop for long-running loops (training, simulation).

The loop calls :meth:`RunControl.checkpoint` between steps; another thread (a GUI, a signal
handler) calls :meth:`pause`, :meth:`resume` or :meth:`stop`. ``checkpoint`` blocks while paused
and raises :class:`RunStopped` once a stop was requested, so the loop ends between two steps
with everything it already collected intact.
"""

from __future__ import annotations

import threading


class RunStopped(Exception):
    """Raised inside a loop at its next checkpoint after :meth:`RunControl.stop`."""


class RunControl:
    """Thread-safe pause/resume/stop flags."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can see the stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def checkpoint(self) -> None:
        """Block while paused; raise :class:`RunStopped` if a stop was requested."""
        self._running.wait()
        if self._stop.is_set():
            raise RunStopped("stopped on request")
