"""Pause, stop and between-step tasks for a run, on the side of the run (no Qt).

A run's loop calls :meth:`WorkerControl.checkpoint` between two steps; the thread that reads the
viewer's commands calls :meth:`~WorkerControl.pause`, :meth:`~WorkerControl.resume`,
:meth:`~WorkerControl.stop` and :meth:`~WorkerControl.submit`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from nbtoolkit.control import RunControl, RunStopped


class WorkerControl(RunControl):
    """A :class:`RunControl` that also runs tasks on the run's thread between two steps, tells
    when the loop parks in a pause, and offers an interruptible sleep.

    Tasks (``submit``) run at the next :meth:`checkpoint`, even while paused, and in
    :meth:`serve` after the run, so that e.g. a checkpoint file is written from a consistent
    state without racing the training loop. ``before_wait()`` is called on the run's thread each
    time it is about to block (to flush what it has to send); ``parked_changed(parked)`` when the
    loop parks in a pause or leaves it.
    """

    def __init__(self, before_wait: Callable[[], None] | None = None,
                 parked_changed: Callable[[bool], None] | None = None) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._tasks: deque[Callable[[], None]] = deque()
        self._parked = False
        self._closed = False
        self._before_wait = before_wait
        self._parked_changed = parked_changed

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

    def close(self) -> None:
        """Stop the run and end :meth:`serve`."""
        with self._cond:
            self._closed = True
            super().stop()
            self._cond.notify_all()

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task()`` on the run's thread at its next checkpoint. ``task`` must not raise."""
        with self._cond:
            self._tasks.append(task)
            self._cond.notify_all()

    @property
    def parked(self) -> bool:
        """True while the loop is blocked in :meth:`checkpoint` because of a pause."""
        with self._cond:
            return self._parked

    def run_pending(self) -> None:
        """Run the submitted tasks now, on the calling thread."""
        with self._cond:
            tasks = list(self._tasks)
            self._tasks.clear()
        for task in tasks:
            task()

    def _set_parked(self, parked: bool) -> None:
        with self._cond:
            changed, self._parked = self._parked != parked, parked
        if changed and self._parked_changed is not None:
            self._parked_changed(parked)

    def _wait(self, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Block until ``ready()`` (checked under the lock) or a notification, at most ``timeout`` s."""
        if self._before_wait is not None:
            self._before_wait()
        with self._cond:
            if not ready():
                self._cond.wait(timeout)

    def checkpoint(self) -> None:
        """Run pending tasks; block while paused; raise :class:`RunStopped` once stopped."""
        while True:
            self.run_pending()
            with self._cond:
                busy, stopped, paused = bool(self._tasks), self.stop_requested, self.paused
            if busy:
                continue
            if stopped or not paused:
                self._set_parked(False)
                if stopped:
                    raise RunStopped("stopped on request")
                return
            self._set_parked(True)
            self._wait(lambda: bool(self._tasks) or self.stop_requested or not self.paused)

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds`` (s), returning early when a stop, pause or task arrives."""
        self._wait(lambda: self.stop_requested or self.paused or bool(self._tasks), timeout=max(0.0, seconds))

    def serve(self) -> None:
        """After the run: run submitted tasks as they come until :meth:`close`."""
        while True:
            self.run_pending()
            with self._cond:
                if self._closed:
                    return
            self._wait(lambda: self._closed or bool(self._tasks))
