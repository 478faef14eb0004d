"""Viewer frame rate and event-loop stalls while training: thread worker against process worker.

Opens the main window offscreen (1400x860) with its orbit view showing a 1,000-body Plummer
sphere, rotating, with 100-point trails, fed a new frame every 5 ms (faster than the frame cap,
so every frame tick has something new to draw). Meanwhile a real training run (``kepler-batch``,
64 orbits, default configuration: the Python-heavy worst case, about 1,000 accepted steps/s
whose events all reach the live plots and the status bar) runs either on a thread of the
viewer's process or in a separate process whose events are streamed back. Phases alternate,
``--rounds`` times each, after a phase without training.

Per phase it prints the frames per second the orbit view painted, the worst and the
99th-percentile stall of the event loop (how late a 2 ms heartbeat timer fired), and the accepted
training steps per second; then the process/thread ratios of the medians over the rounds.

    python benchmarks/bench_viewer.py [--seconds 5] [--rounds 3] [--bodies 1000] [--trail 100]
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PyQt6.QtCore import QEventLoop, Qt, QTimer
from PyQt6.QtWidgets import QApplication

from gui.app import configure_runtime
from gui.bridge import EngineBridge, connect_queued, reference_dt
from gui.main_window import FRAME_RATE, MainWindow
from gui.worker import TrainingWorker
from nbtoolkit import get_host, hookimpl
from nbtoolkit.control import RunControl
from nbtoolkit.events import StepAccepted
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig

HEARTBEAT_MS = 2
FEED_INTERVAL_MS = 5
TRAINING_PRESET = "kepler-batch"
TARGET_FPS = 60.0
TARGET_STALL_MS = 30.0


@dataclass
class Phase:
    """Figures of one measurement phase."""

    kind: str
    fps: float
    worst_ms: float
    p99_ms: float
    accepted_per_s: float = math.nan


class RotatingCluster:
    """Feeds the orbit view a Plummer sphere rotating about the z axis, one frame per call."""

    def __init__(self, window: MainWindow, bodies: int, trail: int) -> None:
        state = make_preset("plummer", n=bodies, seed=1, dim=3).state
        self.window = window
        self.base = state.position[0].numpy()
        self.angle = 0.0
        window.orbit.trail_spin.setValue(trail)
        window.orbit.set_system(state.mass[0].numpy(), dim=3)
        for _ in range(trail + 1):  # full trails from the first frame on
            self.push()

    def push(self) -> None:
        self.angle += 0.01
        c, s = math.cos(self.angle), math.sin(self.angle)
        x, y, z = self.base[:, 0], self.base[:, 1], self.base[:, 2]
        self.window.orbit.push_frame(np.stack([c * x - s * y, s * x + c * y, z], axis=1), self.angle)


class Heartbeat:
    """A fast timer on the GUI thread; each stall is how much later than its interval a timeout came."""

    def __init__(self, interval_ms: int = HEARTBEAT_MS) -> None:
        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._beat)
        self.stalls: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        self.stalls = []
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> np.ndarray:
        self.timer.stop()
        return np.array(self.stalls or [0.0])

    def _beat(self) -> None:
        now = time.perf_counter()
        self.stalls.append(max(0.0, (now - self._last) * 1000.0 - self.interval_ms))
        self._last = now


def run_events(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


class TrainingSink:
    """What the window does with training events, minus the orbit view (it shows the cluster)."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.accepted = 0

    def step_accepted(self, event: StepAccepted, reference: np.ndarray | None) -> None:
        self.window.plots.add_accepted(event, reference)
        self.window._counters["accepted"] += len(event.systems)
        self.accepted += len(event.systems)

    def deliver(self, kind: str, payload: Any) -> None:
        """One event received from the training process."""
        if kind == "step_accepted":
            self.step_accepted(*payload)
        elif kind == "step_rejected":
            self.window._on_step_rejected(payload)
        elif kind == "replay_iteration":
            self.window._on_replay_iteration(payload)
        elif kind == "epoch_end":
            self.window.plots.add_epoch(payload)


class ThreadRun:
    """Training on a thread of this process (the viewer's :class:`TrainingWorker` and bridge)."""

    kind = "thread"

    def __init__(self, sink: TrainingSink) -> None:
        host = get_host()
        system = make_preset(TRAINING_PRESET)
        self.bridge = EngineBridge(host.predictors.create("freefall"), G=system.state.G,
                                   softening=system.state.softening)
        connect_queued(self.bridge.step_accepted, sink.step_accepted)
        connect_queued(self.bridge.step_rejected, sink.window._on_step_rejected)
        connect_queued(self.bridge.replay_iteration, sink.window._on_replay_iteration)
        connect_queued(self.bridge.epoch_ended, sink.window.plots.add_epoch)
        self.bridge.attach(host)
        self.worker = TrainingWorker(TrainConfig(epochs=100_000), system.state, host=host, period=system.period)
        self.worker.start()

    def alive(self) -> bool:
        return self.worker.is_running()

    def close(self) -> None:
        self.worker.shutdown()
        self.worker.finalize()
        self.bridge.detach()


class _Relay:
    """Observer plugin of the training process: batches events and sends them every 10 ms."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.reference = get_host().predictors.create("freefall")
        self.outbox: list[tuple[str, Any]] = []
        self.sent = time.perf_counter()

    def _add(self, kind: str, payload: Any) -> None:
        self.outbox.append((kind, payload))
        if time.perf_counter() - self.sent > 0.01:
            self.conn.send(self.outbox)
            self.outbox, self.sent = [], time.perf_counter()

    @hookimpl
    def nbtoolkit_step_accepted(self, event: StepAccepted) -> None:
        ref = reference_dt(self.reference, event.mass, event.position, event.velocity, event.time, 1.0, 0.0)
        self._add("step_accepted", (event, ref))

    @hookimpl
    def nbtoolkit_step_rejected(self, event: Any) -> None:
        self._add("step_rejected", event)

    @hookimpl
    def nbtoolkit_replay_iteration(self, event: Any) -> None:
        self._add("replay_iteration", event)

    @hookimpl
    def nbtoolkit_epoch_end(self, event: Any) -> None:
        self._add("epoch_end", event)


class _PipeControl(RunControl):
    """Stops the training process's loop when anything arrives on its command pipe."""

    def __init__(self, commands: Any) -> None:
        super().__init__()
        self.commands = commands

    def checkpoint(self) -> None:
        if self.commands.poll():
            self.stop()
        super().checkpoint()


def _train_in_process(events: Any, commands: Any, niceness: int) -> None:
    """Entry point of the training process."""
    from nbtoolkit.threads import apply_thread_policy, available_cpus
    from nbtoolkit.training import Trainer

    apply_thread_policy(max(1, available_cpus() - 1))
    os.nice(niceness)
    host = get_host()
    host.register_plugin(_Relay(events), name="bench-relay")
    system = make_preset(TRAINING_PRESET)
    Trainer(TrainConfig(epochs=100_000), system.state, host=host, control=_PipeControl(commands),
            period=system.period).fit()
    events.send(None)


class ProcessRun:
    """Training in a spawned process; a 5 ms timer drains the events it streams back."""

    kind = "process"

    niceness = 0

    def __init__(self, sink: TrainingSink) -> None:
        context = multiprocessing.get_context("spawn")
        self.events, child_events = context.Pipe(duplex=False)
        child_commands, self.commands = context.Pipe(duplex=False)
        self.sink = sink
        self.process = context.Process(target=_train_in_process, args=(child_events, child_commands, self.niceness),
                                               daemon=True)
        self.process.start()
        self.ended = False
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._drain)
        self.timer.start()

    def _drain(self) -> None:
        while not self.ended and self.events.poll():
            batch = self.events.recv()
            if batch is None:
                self.ended = True
                break
            for kind, payload in batch:
                self.sink.deliver(kind, payload)

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        self.commands.send("stop")
        while not self.ended and self.process.is_alive():
            run_events(0.05)
        self.timer.stop()
        self.process.join()


def measure(window: MainWindow, heartbeat: Heartbeat, seconds: float, kind: str,
            sink: TrainingSink | None = None) -> Phase:
    painted = window.orbit.frames_painted
    accepted = sink.accepted if sink else 0
    heartbeat.start()
    start = time.perf_counter()
    run_events(seconds)
    elapsed = time.perf_counter() - start
    stalls = heartbeat.stop()
    phase = Phase(kind, fps=(window.orbit.frames_painted - painted) / elapsed, worst_ms=float(stalls.max()),
                  p99_ms=float(np.percentile(stalls, 99)))
    if sink is not None:
        phase.accepted_per_s = (sink.accepted - accepted) / elapsed
    return phase


def training_phase(window: MainWindow, heartbeat: Heartbeat, seconds: float, run_type: type) -> Phase:
    """Start a run, skip its set-up (until the first accepted step, then 0.5 s), measure, stop it."""
    sink = TrainingSink(window)
    run = run_type(sink)
    while sink.accepted == 0:
        if not run.alive():
            raise RuntimeError(f"the {run.kind} training run ended before its first step")
        run_events(0.1)
    run_events(0.5)
    phase = measure(window, heartbeat, seconds, run.kind, sink)
    run.close()
    return phase


def report(phases: list[Phase]) -> None:
    print(f"{'phase':10s} {'frames/s':>9s} {'worst stall ms':>15s} {'p99 stall ms':>13s} {'accepted steps/s':>17s}")
    for p in phases:
        print(f"{p.kind:10s} {p.fps:9.1f} {p.worst_ms:15.1f} {p.p99_ms:13.1f} {p.accepted_per_s:17.0f}")
    medians = {}
    for kind in ("thread", "process"):
        rows = [p for p in phases if p.kind == kind]
        medians[kind] = Phase(kind, *(statistics.median(getattr(p, f) for p in rows)
                                      for f in ("fps", "worst_ms", "p99_ms", "accepted_per_s")))
        m = medians[kind]
        print(f"median {kind:8s}: {m.fps:.1f} frames/s, worst stall {m.worst_ms:.1f} ms, p99 {m.p99_ms:.1f} ms, "
              f"{m.accepted_per_s:.0f} accepted steps/s")
    t, p = medians["thread"], medians["process"]
    print(f"process / thread: frames/s x{p.fps / t.fps:.2f}, worst stall x{p.worst_ms / t.worst_ms:.2f}, "
          f"p99 stall x{p.p99_ms / t.p99_ms:.2f}, accepted steps/s x{p.accepted_per_s / t.accepted_per_s:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase (s)")
    parser.add_argument("--rounds", type=int, default=3, help="thread and process phases, alternating")
    parser.add_argument("--bodies", type=int, default=1000, help="bodies in the orbit view")
    parser.add_argument("--trail", type=int, default=100, help="trail points per body")
    parser.add_argument("--niceness", type=int, default=0, help="niceness added to the training process")
    args = parser.parse_args(argv)
    ProcessRun.niceness = args.niceness

    configure_runtime()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow()
    window.resize(1400, 860)
    window.show()
    window.plots.reset("train", n_systems=64, energy_threshold=2e-4, band=(1e-6, 1e-4), reference_name="freefall")
    cluster = RotatingCluster(window, args.bodies, args.trail)
    feeder = QTimer()
    feeder.setInterval(FEED_INTERVAL_MS)
    feeder.timeout.connect(cluster.push)
    feeder.start()
    heartbeat = Heartbeat()
    run_events(1.0)  # first paints, layout

    print(f"orbit view: {args.bodies} bodies, {args.trail}-point trails, window 1400x860 offscreen, frame cap "
          f"{FRAME_RATE:g}/s; training: {TRAINING_PRESET}; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    phases = [measure(window, heartbeat, args.seconds, "idle")]
    for _ in range(args.rounds):
        for run_type in (ThreadRun, ProcessRun):
            phases.append(training_phase(window, heartbeat, args.seconds, run_type))
    feeder.stop()
    window.close()
    app.processEvents()
    report(phases)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
