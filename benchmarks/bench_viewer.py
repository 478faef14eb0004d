"""Viewer frame rate and event-loop stalls while training: a run in its own process against one on a thread.

Opens the main window offscreen (1400x860) with its orbit view showing a 1,000-body Plummer
sphere, rotating, with 100-point trails, fed a new frame every 5 ms (faster than the frame cap,
so every frame tick has something new to draw). Meanwhile a real training run (``kepler-batch``:
8 Kepler orbits, default configuration; small tensors, so Python-heavy: the worst case for a
shared interpreter lock; over 1,000 accepted steps/s, whose events all reach the live plots
and the status bar) runs through the window's
``RunSession`` either in its own process, as in the app, or on a thread of the viewer's process
(``RunWorker(isolation="thread")``: the same messages, sharing the interpreter lock with the GUI).
Phases alternate, ``--rounds`` times each, after a phase without training.

Per phase it prints the frames per second the orbit view painted, the worst and the
99th-percentile stall of the event loop (how late a 2 ms heartbeat timer fired), and the accepted
training steps per second; then the medians over the rounds and the process/thread ratios.
Last, what a long run costs the live plots: the time to add one step and repaint them after
1,000, 30,000 and 100,000 recorded steps of one system.

    python benchmarks/bench_viewer.py [--seconds 5] [--rounds 3] [--bodies 1000] [--trail 100]
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
from PyQt6.QtCore import QEventLoop, Qt, QTimer
from PyQt6.QtWidgets import QApplication

from gui.app import configure_runtime
from gui.jobs import TrainingJob
from gui.main_window import FRAME_RATE, MainWindow
from gui.modes import MODE_TRAIN
from gui.plots import LivePlots
from gui.session import RunState
from gui.worker import RUN_NICENESS
from nbtoolkit.events import StepAccepted
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig

HEARTBEAT_MS = 2
FEED_INTERVAL_MS = 5
TRAINING_PRESET = "kepler-batch"
#: recorded steps after which the cost of a plot refresh is measured
PLOT_ROWS = (1_000, 30_000, 100_000)


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
    """What the window does with accepted steps, minus the orbit view (it shows the cluster)."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.accepted = 0

    def step_accepted(self, event: StepAccepted, reference: np.ndarray | None) -> None:
        self.window.plots.add_accepted(event, reference)
        self.accepted += len(event.systems)


class TrainingRun:
    """A training run started through the window's session, in a process or on a thread."""

    def __init__(self, window: MainWindow, isolation: str) -> None:
        self.kind = isolation
        self.session = window.session
        self.session.isolation = isolation
        system = make_preset(TRAINING_PRESET)
        config = TrainConfig(epochs=100_000)
        window.plots.reset(MODE_TRAIN, n_systems=system.state.batch_size, energy_threshold=config.energy_threshold,
                           band=(config.E_lower, config.E_upper), reference_name="freefall")
        job = TrainingJob(config, system, reference=window.host.predictors.create("freefall"))
        self.session.start(MODE_TRAIN, job)

    def alive(self) -> bool:
        return self.session.state is not RunState.IDLE

    def close(self) -> None:
        self.session.stop()
        while self.alive():
            run_events(0.05)
        self.session.shutdown()  # the run's process exits before the next phase


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


def training_phase(window: MainWindow, heartbeat: Heartbeat, seconds: float, sink: TrainingSink,
                   isolation: str) -> Phase:
    """Start a run, skip its set-up (until the first accepted step, then 0.5 s), measure, stop it."""
    sink.accepted = 0
    run = TrainingRun(window, isolation)
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


def plot_refresh_ms(plots: LivePlots, rows: tuple[int, ...], repeats: int = 5) -> dict[int, float]:
    """Median time (ms) to push one more step to the live plots and repaint them, after each
    number of recorded steps of one system in ``rows`` (noisy |dE/E| and dt, as in training)."""
    rng = np.random.default_rng(0)
    plots.reset(MODE_TRAIN, n_systems=1, energy_threshold=2e-4, band=(1e-6, 1e-4), reference_name="freefall")
    one = np.zeros(1, dtype=np.int64)

    def add(step: int) -> None:
        event = StepAccepted(epoch=0, step=step, systems=one, dt=rng.uniform(1e-3, 1e-1, 1),
                             rel_dE=rng.uniform(1e-7, 1e-4, 1), retrains=rng.integers(0, 3, 1), time=np.zeros(1),
                             position=np.zeros((1, 2, 2)), velocity=np.zeros((1, 2, 2)), mass=np.ones((1, 2)))
        plots.add_accepted(event, rng.uniform(1e-3, 1e-1, 1))

    times, step = {}, 0
    for target in rows:
        while step < target:
            add(step)
            step += 1
        samples = []
        for _ in range(repeats):
            add(step)
            step += 1
            start = time.perf_counter()
            plots.refresh()
            QApplication.processEvents()  # the scenes' queued updates, then the paint
            samples.append((time.perf_counter() - start) * 1000.0)
        times[target] = statistics.median(samples)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase (s)")
    parser.add_argument("--rounds", type=int, default=3, help="thread and process phases, alternating")
    parser.add_argument("--bodies", type=int, default=1000, help="bodies in the orbit view")
    parser.add_argument("--trail", type=int, default=100, help="trail points per body")
    args = parser.parse_args(argv)

    configure_runtime()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow()
    window.resize(1400, 860)
    window.show()
    sink = TrainingSink(window)
    window.session.bridge.step_accepted.disconnect(window._on_step_accepted)  # the orbit view shows the cluster
    window.session.bridge.step_accepted.connect(sink.step_accepted)
    cluster = RotatingCluster(window, args.bodies, args.trail)
    feeder = QTimer()
    feeder.setInterval(FEED_INTERVAL_MS)
    feeder.timeout.connect(cluster.push)
    feeder.start()
    heartbeat = Heartbeat()
    run_events(1.0)  # first paints, layout

    print(f"orbit view: {args.bodies} bodies, {args.trail}-point trails, window 1400x860 offscreen, frame cap "
          f"{FRAME_RATE:g}/s; training: {TRAINING_PRESET} (a process gets niceness +{RUN_NICENESS}); "
          f"{os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    phases = [measure(window, heartbeat, args.seconds, "idle")]
    for _ in range(args.rounds):
        for isolation in ("thread", "process"):
            phases.append(training_phase(window, heartbeat, args.seconds, sink, isolation))
    feeder.stop()
    report(phases)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    window.frame_timer.stop()
    refresh = plot_refresh_ms(window.plots, PLOT_ROWS)
    print("live plots, one more step and a repaint after n steps of one system: "
          + ", ".join(f"n = {n:,}: {ms:.1f} ms" for n, ms in refresh.items()))
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
