"""Shared fixtures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from nbtoolkit import get_host, hookimpl
from nbtoolkit.control import RunControl


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests' tensors are tiny: one intra-op thread avoids thread-sync overhead (as the viewer
    does on 2 cores). Restored at the end of the session."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def load_benchmark():
    """``load_benchmark(name)``: the script ``benchmarks/<name>.py`` imported as module ``name`` (registered in
    ``sys.modules`` while the test runs, as dataclasses look their module up while the class is built)."""
    loaded: list[str] = []

    def _load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield _load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def fresh_compiled(monkeypatch):
    """``NBTOOLKIT_COMPILE=1``, with every compiled function of nbtoolkit (the force kernel, the learned dt
    evaluation, leapfrog's error estimate) not yet compiled and not failed; restored after the test."""
    import nbtoolkit.kernel as kernel
    import nbtoolkit.shadow as shadow
    import plugins.safety_classes as safety_classes
    from nbtoolkit.compiled import COMPILE_ENV

    for function in (kernel.compiled_acc, safety_classes.compiled_dt_and_class, shadow.compiled_step_rates):
        monkeypatch.setattr(function, "compiled", None)
        monkeypatch.setattr(function, "failed", False)
    monkeypatch.setenv(COMPILE_ENV, "1")


@pytest.fixture
def host():
    """The process-wide plugin host (tests that register plugins remove them again)."""
    return get_host()


@pytest.fixture
def register_plugin(host):
    """``register_plugin(plugin, name, source=None)``: register a fake plugin object on the host for the
    rest of the test and return its name. Afterwards each is unregistered again, and nothing it
    registered may be left in the registries."""
    names: list[str] = []

    def _register(plugin, name: str, source: str | None = None) -> str:
        names.append(host.register_plugin(plugin, name=name, source=source))
        return names[-1]

    yield _register
    for name in reversed(names):
        host.unregister_plugin(name)
        assert not [e.name for r in host.registries() for e in r.entries() if e.plugin == name]


class EventRecorder:
    """Records every observer event, in order.

    Registered as a plugin (the ``events`` fixture) it sees what the training engine fires through
    ``host.hook``; passed where the engine expects ``host.hook`` (``LoopContext(..., hook=...)``) it
    stands in for the hook relay. With ``control`` and ``stop_at`` it requests a stop on the
    ``stop_at``-th accepted step.
    """

    def __init__(self, control: RunControl | None = None, stop_at: int | None = None) -> None:
        self.seen: list = []
        self.control, self.stop_at = control, stop_at

    def names(self) -> list[str]:
        """Event class names, in the order they were fired."""
        return [type(e).__name__ for e in self.seen]

    def of(self, name: str) -> list:
        """The events of class ``name`` (e.g. ``"StepAccepted"``), in order."""
        return [e for e in self.seen if type(e).__name__ == name]

    def _record(self, event) -> None:
        self.seen.append(event)

    @hookimpl
    def nbtoolkit_fit_start(self, event):
        self._record(event)

    @hookimpl
    def nbtoolkit_step_accepted(self, event):
        self._record(event)
        if self.stop_at is not None and len(self.of("StepAccepted")) == self.stop_at:
            self.control.stop()

    @hookimpl
    def nbtoolkit_step_rejected(self, event):
        self._record(event)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event):
        self._record(event)

    @hookimpl
    def nbtoolkit_epoch_end(self, event):
        self._record(event)

    @hookimpl
    def nbtoolkit_fit_end(self, event):
        self._record(event)


@pytest.fixture
def events(register_plugin):
    """An :class:`EventRecorder` registered on the host for the duration of the test."""
    recorder = EventRecorder()
    register_plugin(recorder, "test-events")
    return recorder
