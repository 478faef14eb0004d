"""The viewer's side of a run: :class:`RunWorker` starts a job in its own process and streams its
messages back to the GUI thread.

The run executes :func:`gui.runner.run_child` in a process started with ``spawn``, so training
never competes with the event loop for the interpreter lock, and its priority is lowered so the
GUI wins the CPU when both want it (``benchmarks/bench_viewer.py`` measures both designs). A
:class:`~PyQt6.QtCore.QTimer` drains the message pipe on the GUI thread for at most
:data:`POLL_BUDGET_S` per tick; whatever is left waits in the pipe, which slows the run down
rather than the viewer. Commands go the other way (pause, resume, stop, speed, save).

Lifecycle: ``start()``; ``received(kind, payload)`` for every message of the run; ``ended(outcome)``
once, when the job has ended (or its process died); the process then stays to write checkpoints
of what it trained until :meth:`RunWorker.close`; ``closed()`` once it has exited and been
reaped. :meth:`RunWorker.shutdown` does all of that, blocking for at most a few seconds.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from typing import Any

from PyQt6.QtCore import QObject, QTimer, pyqtSignal

from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.predictor import DtPredictor

from .jobs import Job, RunOutcome
from .runner import portable_plugins, run_child

#: where a run executes: its own process (the viewer's choice) or a thread of the viewer's process
ISOLATIONS = ("process", "thread")
#: niceness added to the run's process: the GUI gets the CPU first when both want it
RUN_NICENESS = 5
#: the GUI thread drains messages every POLL_MS for at most POLL_BUDGET_S
POLL_MS = 5
POLL_BUDGET_S = 0.004
#: how long a closing run may take to exit before it is terminated (s)
CLOSE_TIMEOUT_S = 10.0
#: how long :meth:`RunWorker.shutdown` waits for the run to stop between two steps (s)
SHUTDOWN_TIMEOUT_S = 5.0


class RunWorker(QObject):
    """One run of a :class:`~gui.jobs.Job`, in its own process (``isolation="process"``) or on a
    thread of this process (``"thread"``, sharing the interpreter lock with the GUI; for
    comparison and debugging). Commands take effect between two steps of the run."""

    received = pyqtSignal(str, object)
    ended = pyqtSignal(object)  # RunOutcome
    closed = pyqtSignal()

    def __init__(self, job: Job, host: PluginHost, *, isolation: str = "process", niceness: int = RUN_NICENESS,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}; got {isolation!r}")
        self.job = job
        self.host = host
        self.isolation = isolation
        self.niceness = niceness
        self.outcome: RunOutcome | None = None
        self.model: DtPredictor | None = None
        self.parked = False
        self._process: Any = None
        self._thread: threading.Thread | None = None
        self._events: Any = None
        self._commands: Any = None
        self._closing_since: float | None = None
        self._done = False
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the run (returns at once; a process needs a second or two to load torch)."""
        payload = pickle.dumps(self.job, protocol=pickle.HIGHEST_PROTOCOL)
        context = multiprocessing.get_context("spawn")
        self._events, child_events = context.Pipe(duplex=False)
        child_commands, self._commands = context.Pipe(duplex=False)
        if self.isolation == "process":
            plugins, problems = portable_plugins(self.host)
            self._process = context.Process(
                target=run_child, args=(payload, child_events, child_commands),
                kwargs={"niceness": self.niceness, "plugins": plugins}, name=f"nbtoolkit-{type(self.job).__name__}",
                daemon=True)
            self._process.start()
            child_events.close()  # the run holds the only other ends: their closing means it has exited
            child_commands.close()
        else:
            problems = []
            self._thread = threading.Thread(target=run_child, args=(payload, child_events, child_commands),
                                            kwargs={"host": self.host}, name="nbtoolkit-run", daemon=True)
            self._thread.start()
        self._timer.start()
        for problem in problems:
            self.received.emit("notice", problem)

    @property
    def active(self) -> bool:
        """True from :meth:`start` until the job has ended."""
        return self._timer.isActive() and self.outcome is None

    @property
    def alive(self) -> bool:
        """True while the run's process (or thread) has not exited."""
        if self._process is not None:
            return bool(self._process.is_alive())
        return self._thread is not None and self._thread.is_alive()

    @property
    def pid(self) -> int | None:
        """The run's process id (None on a thread or before the start)."""
        return None if self._process is None else self._process.pid

    @property
    def exitcode(self) -> int | None:
        """The run's exit status once its process has exited and been reaped, else None."""
        return None if self._process is None else self._process.exitcode

    def close(self) -> None:
        """Stop the run if it is active and let its process exit (returns at once; ``closed`` follows)."""
        if self._closing_since is None and not self._done:
            self._closing_since = time.monotonic()
            self._send("close")

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Close the run and wait until it has exited, at most ``timeout`` s before terminating it.
        Messages that arrive meanwhile are still delivered (the outcome among them)."""
        if self._events is None:  # never started
            self._done = True
            return
        self.close()
        deadline = time.monotonic() + timeout
        while not self._done and time.monotonic() < deadline:
            self._poll(budget=None)
            time.sleep(0.005)
        if not self._done:
            self._terminate()
            self._poll(budget=None)

    # ------------------------------------------------------------------ commands
    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop(self) -> None:
        """Ask the run to end at its next step boundary (also wakes a paused run)."""
        self._send("stop")

    def set_speed(self, steps_per_second: float) -> None:
        self._send("speed", float(steps_per_second))

    def save_checkpoint(self, path: str) -> None:
        """Ask the run to write a checkpoint (between two steps, or at once after the run);
        ``received("checkpoint_saved", path)`` or ``("checkpoint_failed", (path, message))`` answers."""
        if self._done or self._closing_since is not None:
            self.received.emit("checkpoint_failed", (path, "the run that trained the model has been closed"))
        else:
            self._send("save", path)

    def _send(self, *command: Any) -> None:
        if self._commands is None or self._done:
            return
        try:
            self._commands.send(command)
        except (OSError, ValueError):  # the run has exited; the poll timer reports it
            pass

    # ------------------------------------------------------------------ messages
    def _poll(self, budget: float | None = POLL_BUDGET_S) -> None:
        """Deliver the run's messages, for at most ``budget`` s (None: all there are); notice its exit."""
        if self._done or self._events is None:
            return
        start = time.perf_counter()
        exhausted = False
        try:
            while not exhausted:
                if self._events.poll():
                    for kind, payload in pickle.loads(self._events.recv_bytes()):
                        self._deliver(kind, payload)
                    if budget is not None and time.perf_counter() - start > budget:
                        return
                elif self.alive:
                    break
                else:  # exited: take what it wrote just before, then stop
                    exhausted = not self._events.poll()
        except (EOFError, OSError):  # the run's end of the pipe has closed: it has exited
            exhausted = True
        if exhausted:
            self._finish()
        elif self._closing_since is not None and time.monotonic() - self._closing_since > CLOSE_TIMEOUT_S:
            self._terminate()

    def _deliver(self, kind: str, payload: Any) -> None:
        if kind == "parked":
            self.parked = bool(payload)
        elif kind == "ended":
            self._end(*payload)
        else:
            self.received.emit(kind, payload)

    def _end(self, outcome: RunOutcome, model: DtPredictor | None) -> None:
        if self.outcome is None:  # once, whatever happens afterwards
            self.outcome, self.model, self.parked = outcome, model, False
            self.ended.emit(outcome)

    def _terminate(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(1.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()

    def _finish(self) -> None:
        """The run has exited: reap it, close the pipes and report."""
        self._timer.stop()
        self._done = True
        if self._process is not None:
            self._process.join()
        if self._thread is not None:
            self._thread.join()
        status = self.exitcode
        how = "without a result" if status is None else \
            f"with exit status {status}" if status >= 0 else f"by signal {-status}"
        self._end(RunOutcome("failed", error=f"the run ended unexpectedly, {how}"), None)
        for conn in (self._events, self._commands):
            conn.close()
        self.closed.emit()
