"""The run -> Qt bridge: the messages of a run, turned into typed Qt signals on the GUI thread.

The training engine fires its observer hooks in the run's process, where
:class:`gui.jobs.EventRelay` sends each event on unchanged; :class:`gui.worker.RunWorker` receives
them on the GUI thread and :meth:`EngineBridge.deliver` re-emits each as the signal of its kind.
The window connects its slots to these signals once; they only append to buffers.
"""

from __future__ import annotations

from typing import Any

from PyQt6.QtCore import QObject, pyqtSignal


class EngineBridge(QObject):
    """Signals for the messages of a run. Engine events arrive as the dataclasses of
    :mod:`nbtoolkit.events` (plain numbers and numpy arrays); ``step_accepted`` also carries the
    classical reference dt (k,) of the state each listed system is now in, or None."""

    fit_started = pyqtSignal(object)  # FitStart
    step_accepted = pyqtSignal(object, object)  # StepAccepted, np.ndarray (k,) | None
    step_rejected = pyqtSignal(object)  # StepRejected
    replay_iteration = pyqtSignal(object)  # ReplayIteration
    epoch_ended = pyqtSignal(object)  # EpochEnd
    fit_ended = pyqtSignal(object)  # FitEnd
    frames = pyqtSignal(object)  # list[PlaybackFrame]
    notice = pyqtSignal(str)  # a non-fatal problem worth showing to the user
    checkpoint_saved = pyqtSignal(str)  # path
    checkpoint_failed = pyqtSignal(str, str)  # path, message

    def deliver(self, kind: str, payload: Any) -> None:
        """Emit the signal for one message of a run (see :mod:`gui.runner` for the kinds)."""
        if kind == "step_accepted":
            self.step_accepted.emit(*payload)
        elif kind == "checkpoint_failed":
            self.checkpoint_failed.emit(*payload)
        elif kind in _SIGNALS:
            getattr(self, _SIGNALS[kind]).emit(payload)
        else:
            raise ValueError(f"unknown message kind {kind!r} from a run")


#: message kind -> name of the signal with one argument that carries it
_SIGNALS = {
    "fit_start": "fit_started", "step_rejected": "step_rejected", "replay_iteration": "replay_iteration",
    "epoch_end": "epoch_ended", "fit_end": "fit_ended", "frames": "frames", "notice": "notice",
    "checkpoint_saved": "checkpoint_saved",
}
