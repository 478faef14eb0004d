"""RunSession's state machine and RunWorker's process handling, with small stand-in jobs."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("PyQt6")
pytest.importorskip("pytestqt")

from gui.modes import MODE_SIMULATE, MODE_TRAIN  # noqa: E402
from gui.runner import portable_plugins  # noqa: E402
from gui.session import RunSession, RunState  # noqa: E402
from gui.worker import RunWorker  # noqa: E402

TIMEOUT_MS = 30_000


@dataclass
class CountingJob:
    """Counts steps (a notice each) until ``steps`` or a stop; then fails if ``fail`` is set."""

    steps: int = 0
    fail: str | None = None
    exit_status: int | None = None

    def run(self, host: Any, control: Any, send: Any) -> int:
        step = 0
        while self.steps == 0 or step < self.steps:
            control.checkpoint()
            step += 1
            send("notice", f"step {step}")
            time.sleep(0.002)
        if self.exit_status is not None:
            os._exit(self.exit_status)  # the run's process dies without a word
        if self.fail:
            raise RuntimeError(self.fail)
        return step

    def save_checkpoint(self, path: str) -> None:
        with open(path, "w") as fh:
            fh.write("saved")

    def trained_model(self) -> None:
        return None


@pytest.fixture
def session(qtbot, host):
    s = RunSession(host, isolation="thread")
    states: list[RunState] = []
    s.state_changed.connect(states.append)
    s.states = states  # type: ignore[attr-defined]
    notices: list[str] = []
    s.bridge.notice.connect(notices.append)
    s.notices = notices  # type: ignore[attr-defined]
    yield s
    s.shutdown()


def test_session_goes_running_paused_running_stopping_idle(qtbot, session):
    assert session.state is RunState.IDLE
    assert not session.pause() and not session.resume() and not session.stop()  # nothing to act on
    assert session.start(MODE_SIMULATE, CountingJob())
    assert session.state is RunState.RUNNING and session.mode == MODE_SIMULATE
    assert not session.start(MODE_SIMULATE, CountingJob())  # one run at a time
    qtbot.waitUntil(lambda: len(session.notices) >= 3, timeout=TIMEOUT_MS)
    assert session.pause() and session.state is RunState.PAUSED
    assert not session.pause()
    qtbot.waitUntil(lambda: session.parked, timeout=TIMEOUT_MS)
    count = len(session.notices)
    qtbot.wait(100)
    assert len(session.notices) == count  # parked: no steps
    assert session.resume() and session.state is RunState.RUNNING
    qtbot.waitUntil(lambda: len(session.notices) > count and not session.parked, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(session.finished, timeout=TIMEOUT_MS) as blocker:
        assert session.stop() and session.state is RunState.STOPPING
        assert not session.pause()
    mode, outcome = blocker.args
    assert mode == MODE_SIMULATE and outcome.kind == "stopped" and session.last_outcome is outcome
    assert session.states == [RunState.RUNNING, RunState.PAUSED, RunState.RUNNING, RunState.STOPPING, RunState.IDLE]
    assert session.state is RunState.IDLE and session.mode is None and session.worker is None
    assert session.elapsed() > 0


def test_stopping_a_paused_run_ends_it(qtbot, session):
    session.start(MODE_SIMULATE, CountingJob())
    session.pause()
    qtbot.waitUntil(lambda: session.parked, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(session.finished, timeout=TIMEOUT_MS) as blocker:
        session.stop()
    assert blocker.args[1].kind == "stopped"
    assert session.states[-2:] == [RunState.STOPPING, RunState.IDLE]


def test_a_failing_run_is_reported_once_and_the_session_is_reusable(qtbot, session):
    outcomes: list = []
    session.finished.connect(lambda mode, outcome: outcomes.append(outcome))
    session.start(MODE_TRAIN, CountingJob(steps=2, fail="broke on purpose"))
    qtbot.waitUntil(lambda: session.state is RunState.IDLE, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    assert len(outcomes) == 1 and outcomes[0].kind == "failed"
    assert "broke on purpose" in outcomes[0].error and "Traceback" in outcomes[0].details
    with qtbot.waitSignal(session.finished, timeout=TIMEOUT_MS) as blocker:
        assert session.start(MODE_TRAIN, CountingJob(steps=3))
    assert blocker.args[1].kind == "finished" and blocker.args[1].result == 3


def test_the_last_training_run_stays_for_checkpoints_until_the_next_one(qtbot, session, tmp_path):
    assert not session.save_checkpoint(str(tmp_path / "none.txt"))  # nothing trained yet
    with qtbot.waitSignal(session.finished, timeout=TIMEOUT_MS):
        session.start(MODE_TRAIN, CountingJob(steps=2))
    first = session.trainer
    assert first is not None and first.alive
    with qtbot.waitSignal(session.bridge.checkpoint_saved, timeout=TIMEOUT_MS) as blocker:
        assert session.save_checkpoint(str(tmp_path / "after.txt"))
    assert blocker.args == [str(tmp_path / "after.txt")] and (tmp_path / "after.txt").read_text() == "saved"
    with qtbot.waitSignal(session.finished, timeout=TIMEOUT_MS):  # a playback keeps the trainer
        session.start(MODE_SIMULATE, CountingJob(steps=2))
    assert session.trainer is first and first.alive
    with qtbot.waitSignal(first.closed, timeout=TIMEOUT_MS):  # the next training closes it
        session.start(MODE_TRAIN, CountingJob())
    assert session.trainer is not first and not first.alive


def test_a_run_process_that_dies_is_reported_once_with_its_exit_status(qtbot, host):
    worker = RunWorker(CountingJob(steps=2, exit_status=3), host, isolation="process")
    outcomes: list = []
    worker.ended.connect(outcomes.append)
    with qtbot.waitSignal(worker.closed, timeout=TIMEOUT_MS):
        worker.start()
    qtbot.wait(50)
    assert len(outcomes) == 1 and outcomes[0].kind == "failed"
    assert "ended unexpectedly, with exit status 3" in outcomes[0].error
    assert worker.exitcode == 3 and not worker.alive
    worker.shutdown()  # nothing left to do: returns at once
    assert len(outcomes) == 1


def test_shutdown_stops_a_run_process_and_reaps_it(qtbot, host):
    worker = RunWorker(CountingJob(), host, isolation="process")
    steps: list[str] = []
    worker.received.connect(lambda kind, payload: steps.append(payload))
    worker.start()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=TIMEOUT_MS)
    worker.pause()
    qtbot.waitUntil(lambda: worker.parked, timeout=TIMEOUT_MS)
    worker.shutdown()
    assert worker.outcome is not None and worker.outcome.kind == "stopped"
    assert not worker.alive and worker.exitcode == 0
    with pytest.raises(ValueError, match="isolation"):
        RunWorker(CountingJob(), host, isolation="fiber")


class TravellingPlugin:
    """A plugin object that pickles (its class is importable)."""


def test_plugins_registered_at_run_time_travel_to_the_run_when_they_can_be_pickled(host):
    class Local:  # defined in a function: cannot be pickled
        pass

    names = [host.register_plugin(TravellingPlugin(), name="test-travelling"),
             host.register_plugin(Local(), name="test-local")]
    try:
        portable, problems = portable_plugins(host)
    finally:
        for name in names:
            host.unregister_plugin(name)
    travelling = [name for name, _ in portable]
    assert "test-travelling" in travelling and "test-local" not in travelling
    local = [line for line in problems if "'test-local'" in line]
    assert len(local) == 1 and "stays in the viewer" in local[0]


def test_a_worker_that_never_started_shuts_down_at_once(host):
    worker = RunWorker(CountingJob(), host)
    start = time.monotonic()
    worker.shutdown()
    assert time.monotonic() - start < 1.0 and not worker.alive and worker.outcome is None
