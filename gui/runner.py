"""The run's side of a viewer run: :func:`run_child`, the entry point of the run's process (no Qt).

Two one-way pipes join it to the viewer (:class:`gui.worker.RunWorker`). Commands come in as
tuples: ``("pause",)``, ``("resume",)``, ``("stop",)``, ``("speed", steps_per_second)``,
``("save", path)``, ``("close",)``. Messages go out as pickled lists of ``(kind, payload)``, sent
by an :class:`Outbox` at most every :data:`FLUSH_INTERVAL` seconds: the job's own messages
(engine events, frames, notices), ``("parked", bool)`` when the run parks in a pause or leaves
it, ``("checkpoint_saved", path)`` or ``("checkpoint_failed", (path, message))``, and once
``("ended", (RunOutcome, trained model or None))``. After the job the process stays to write
checkpoints of what it trained, until ``close`` arrives or the viewer's end of the pipe closes.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import traceback
from functools import partial
from types import ModuleType
from typing import Any

from nbtoolkit.control import RunStopped
from nbtoolkit.plugin_manager import PluginHost, get_host

from .control import WorkerControl
from .jobs import Job, RunOutcome, Send

#: pending messages are sent at most this long (s) after the first of them was queued
FLUSH_INTERVAL = 0.02
#: with this many messages pending, the run waits until the viewer has taken them (backpressure)
MAX_PENDING = 2000


class Outbox:
    """Batches messages and sends them as one pickled list, from the run's thread when due and
    from a background thread otherwise, so nothing waits longer than :data:`FLUSH_INTERVAL`."""

    def __init__(self, conn: Any, interval: float = FLUSH_INTERVAL) -> None:
        self._conn = conn
        self._interval = interval
        self._lock = threading.Lock()
        self._items: list[tuple[str, Any]] = []
        self._since = 0.0
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, name="viewer-outbox", daemon=True)
        self._flusher.start()

    def send(self, kind: str, payload: Any) -> None:
        """Queue a message; sends the batch when it is due."""
        with self._lock:
            if not self._items:
                self._since = time.monotonic()
            self._items.append((kind, payload))
            due = len(self._items) >= MAX_PENDING or time.monotonic() - self._since >= self._interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Send what is queued now."""
        with self._lock:
            if self._items:
                items, self._items = self._items, []
                self._conn.send_bytes(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self._interval):
            try:
                self.flush()
            except (OSError, ValueError):  # the viewer has gone
                return

    def close(self) -> None:
        """Send what is left and stop the background thread."""
        self._closed.set()
        self._flusher.join()
        self.flush()


def portable_plugins(host: PluginHost) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The plugins registered on ``host`` as objects (at run time: tests, notebooks), pickled so
    that a fresh process can register them too, and one line per plugin that cannot travel.

    Modules (the default plugins, most installed ones) are loaded by the fresh process itself.
    """
    portable, problems = [], []
    for name, plugin in host.pm.list_name_plugin():
        if plugin is None or isinstance(plugin, ModuleType):
            continue
        try:
            portable.append((name, pickle.dumps(plugin)))
        except Exception as exc:
            problems.append(f"plugin '{name}' stays in the viewer: the run cannot receive it "
                            f"({type(exc).__name__}: {exc})")
    return portable, problems


def _install_plugins(host: PluginHost, plugins: list[tuple[str, bytes]], send: Send) -> None:
    for name, payload in plugins:
        if host.pm.get_plugin(name) is not None:
            continue
        try:
            host.register_plugin(pickle.loads(payload), name=name, source=f"object {name} (from the viewer)")
        except Exception as exc:
            send("notice", f"plugin '{name}' is not available to the run: {type(exc).__name__}: {exc}")


def _read_commands(commands: Any, control: WorkerControl, job: Job, outbox: Outbox) -> None:
    """Apply the viewer's commands until ``close`` or until the viewer's end of the pipe closes."""
    try:
        while True:
            command, *args = commands.recv()
            if command == "close":
                break
            if command == "pause":
                control.pause()
            elif command == "resume":
                control.resume()
            elif command == "stop":
                control.stop()
            elif command == "speed" and hasattr(job, "set_speed"):
                job.set_speed(float(args[0]))
            elif command == "save":
                control.submit(partial(_save_checkpoint, job, str(args[0]), outbox.send))
    except (EOFError, OSError):
        pass
    control.close()


def _save_checkpoint(job: Job, path: str, send: Send) -> None:
    try:
        if not hasattr(job, "save_checkpoint"):
            raise RuntimeError("this run keeps no model to save")
        job.save_checkpoint(path)
    except Exception as exc:
        send("checkpoint_failed", (path, f"{type(exc).__name__}: {exc}"))
    else:
        send("checkpoint_saved", path)


def _run_job(job: Job, host: PluginHost, control: WorkerControl, send: Send) -> RunOutcome:
    try:
        result = job.run(host, control, send)
        stopped = bool(getattr(result, "stopped", False)) or control.stop_requested
        return RunOutcome("stopped" if stopped else "finished", result)
    except RunStopped:
        return RunOutcome("stopped")
    except Exception as exc:
        return RunOutcome("failed", error=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())


def _portable_model(job: Job, send: Send) -> Any:
    """The job's trained model if it can be sent to the viewer, else None (with a notice)."""
    model = job.trained_model()
    if model is None:
        return None
    try:
        pickle.dumps(model)
    except Exception as exc:
        send("notice", f"the trained model cannot be sent to the viewer ({type(exc).__name__}: {exc}); "
                       "save a checkpoint to simulate with it")
        return None
    return model


def run_child(job_payload: bytes, events: Any, commands: Any, *, host: PluginHost | None = None, niceness: int = 0,
              plugins: list[tuple[str, bytes]] | None = None) -> None:
    """Run a pickled :class:`~gui.jobs.Job`, reporting on ``events`` and obeying ``commands``.

    Without ``host`` this is the run's own process: it loads the plugins (the default and
    installed ones, then the viewer's ``plugins``, see :func:`portable_plugins`), sets its torch
    threads (all CPUs but one, which the viewer keeps) and lowers its priority by ``niceness``.
    With ``host`` it runs on a thread of the viewer's process and uses the viewer's plugins.
    """
    outbox = Outbox(events)
    control = WorkerControl(before_wait=outbox.flush, parked_changed=partial(outbox.send, "parked"))
    try:
        if host is None:
            from nbtoolkit.threads import apply_thread_policy, available_cpus

            host = get_host()

            apply_thread_policy(max(1, available_cpus() - 1))
            if niceness and hasattr(os, "nice"):
                os.nice(niceness)
            _install_plugins(host, plugins or [], outbox.send)
        job: Job = pickle.loads(job_payload)
    except Exception as exc:
        outbox.send("ended", (RunOutcome("failed", error=f"{type(exc).__name__}: {exc}",
                                         details=traceback.format_exc()), None))
        outbox.close()
        events.close()
        return
    reader = threading.Thread(target=_read_commands, args=(commands, control, job, outbox), name="viewer-commands",
                              daemon=True)
    reader.start()
    outcome = _run_job(job, host, control, outbox.send)
    control.run_pending()  # e.g. a checkpoint requested just before the run ended
    outbox.send("ended", (outcome, _portable_model(job, outbox.send)))
    control.serve()  # returns once the command reader has ended
    outbox.close()
    events.close()
    commands.close()
