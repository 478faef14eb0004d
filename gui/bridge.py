"""The engine -> Qt bridge: an observer plugin whose hook implementations emit Qt signals.

The training engine fires its observer hooks (:mod:`nbtoolkit.hookspecs`) on the worker thread.
:class:`EngineBridge` is registered on the plugin host for the duration of one run
(:meth:`EngineBridge.attach` / :meth:`EngineBridge.detach`); each hook implementation only
re-emits the event as a Qt signal. Receivers living on the GUI thread are connected with
:func:`connect_queued`, so the event is delivered there through the GUI event loop and the
engine never touches a widget.

For accepted steps the bridge also evaluates a classical dt rule (for example ``freefall``) on
the state the *next* step starts from, on the worker thread, so the viewer can draw the
learned dt against a classical reference without doing physics on the GUI thread.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np
import torch
from PyQt6.QtCore import QObject, Qt, pyqtBoundSignal, pyqtSignal

from nbtoolkit import hookimpl
from nbtoolkit.events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.state import NBodyState

_BRIDGE_IDS = itertools.count(1)


def connect_queued(signal: pyqtBoundSignal, slot: Callable[..., Any]) -> None:
    """Connect ``signal`` to ``slot`` with a queued connection: the slot always runs on the
    thread of its receiver (the GUI thread for widgets), never on the emitting worker thread."""
    signal.connect(slot, Qt.ConnectionType.QueuedConnection)  # type: ignore[call-arg]  # stubs omit the type


def reference_dt(reference: DtPredictor, mass: np.ndarray, position: np.ndarray, velocity: np.ndarray,
                 time: np.ndarray, G: float, softening: float) -> np.ndarray:
    """The dt of a classical rule for k states, as a float64 array (k,).

    mass (k, N), position and velocity (k, N, D), time (k,), in the units of the run.
    """
    state = NBodyState.from_arrays(mass, position, velocity, time, G=G, softening=softening, validate=False)
    with torch.no_grad():
        dt = reference(state, None)
    return dt.detach().cpu().numpy().astype(np.float64, copy=False)


class EngineBridge(QObject):
    """Observer plugin turning training events into Qt signals.

    Signals carry the event dataclasses of :mod:`nbtoolkit.events` unchanged (plain numbers
    and numpy arrays). ``step_accepted`` also carries the classical reference dt (k,) of the
    state each listed system is now in (the state its next step starts from), or None when no
    reference rule is set or it failed (a ``notice`` explains the failure once).
    """

    fit_started = pyqtSignal(object)  # FitStart
    step_accepted = pyqtSignal(object, object)  # StepAccepted, np.ndarray (k,) | None
    step_rejected = pyqtSignal(object)  # StepRejected
    replay_iteration = pyqtSignal(object)  # ReplayIteration
    epoch_ended = pyqtSignal(object)  # EpochEnd
    fit_ended = pyqtSignal(object)  # FitEnd
    notice = pyqtSignal(str)  # a non-fatal problem worth showing to the user

    def __init__(self, reference: DtPredictor | None = None, *, G: float = 1.0, softening: float = 0.0,
                 parent: QObject | None = None) -> None:
        """``reference``: classical dt rule evaluated on accepted states; ``G`` and ``softening``
        are those of the trained system (the events do not carry them)."""
        super().__init__(parent)
        self._reference = reference
        self._G = float(G)
        self._softening = float(softening)
        self._host: PluginHost | None = None
        self.plugin_name = f"gui-bridge-{next(_BRIDGE_IDS)}"

    # ------------------------------------------------------------------ registration
    def attach(self, host: PluginHost) -> None:
        """Register on ``host`` so its observer hooks reach this bridge."""
        if self._host is not None:
            raise RuntimeError(f"{self.plugin_name} is already attached to a plugin host")
        host.register_plugin(self, name=self.plugin_name, source="nbtoolkit viewer")
        self._host = host

    def detach(self) -> None:
        """Unregister from the host (no-op when not attached)."""
        if self._host is not None:
            self._host.unregister_plugin(self.plugin_name)
            self._host = None

    @property
    def attached(self) -> bool:
        return self._host is not None

    # ------------------------------------------------------------------ hook implementations
    @hookimpl
    def nbtoolkit_fit_start(self, event: FitStart) -> None:
        self.fit_started.emit(event)

    @hookimpl
    def nbtoolkit_step_accepted(self, event: StepAccepted) -> None:
        ref = None
        if self._reference is not None:
            try:
                ref = reference_dt(self._reference, event.mass, event.position, event.velocity, event.time,
                                   self._G, self._softening)
            except Exception as exc:  # a broken reference rule must never stop training
                self._reference = None
                self.notice.emit(f"reference dt disabled: {type(exc).__name__}: {exc}")
        self.step_accepted.emit(event, ref)

    @hookimpl
    def nbtoolkit_step_rejected(self, event: StepRejected) -> None:
        self.step_rejected.emit(event)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event: ReplayIteration) -> None:
        self.replay_iteration.emit(event)

    @hookimpl
    def nbtoolkit_epoch_end(self, event: EpochEnd) -> None:
        self.epoch_ended.emit(event)

    @hookimpl
    def nbtoolkit_fit_end(self, event: FitEnd) -> None:
        self.fit_ended.emit(event)
