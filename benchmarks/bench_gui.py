"""Viewer responsiveness while training runs (offscreen).

Measures, in one run and on the same main window:

(a) frames per second actually painted by the orbit view showing N = 1,000 bodies (a Plummer
    sphere, rotating) with trails of 100 points each, fed with a new frame every 5 ms, i.e.
    faster than the screen, so every frame tick has something new to draw;
(b) the worst delay of a 10 ms QTimer on the GUI thread (event-loop latency);

first with no training, then while a real ``Trainer.fit()`` (kepler-batch, default
configuration) runs on a worker thread and its events stream into the live plots through the
engine bridge, as in the app. The frame rate is capped by the window's frame timer
(``gui.main_window.FRAME_RATE``). The orbit view merges trail segments shorter than a pixel
when drawing, as it does in the app; ``--full-detail`` draws every stored trail point instead.
Requirements: >= 30 frames/s and a worst timer delay under 100 ms while training. The last
line printed is the frame rate while training; the exit status is 1 if a requirement failed.

    python benchmarks/bench_gui.py [--seconds 5] [--bodies 1000] [--trail 100] [--full-detail]
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
from PyQt6.QtCore import QEventLoop, Qt, QTimer
from PyQt6.QtWidgets import QApplication

from gui.app import configure_runtime
from gui.bridge import EngineBridge, connect_queued
from gui.main_window import FRAME_RATE, MainWindow
from gui.worker import TrainingWorker
from nbtoolkit import get_host
from nbtoolkit.events import ReplayIteration, StepAccepted
from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig

REQUIRED_FPS = 30.0
MAX_TIMER_DELAY_MS = 100.0
PROBE_INTERVAL_MS = 10
FEED_INTERVAL_MS = 5


@dataclass
class Phase:
    """Figures of one measurement phase."""

    fps: float
    worst_delay_ms: float
    median_delay_ms: float
    accepted_per_s: float = math.nan
    replay_per_s: float = math.nan


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
        frame = np.stack([c * x - s * y, s * x + c * y, z], axis=1)
        self.window.orbit.push_frame(frame, self.angle)


class DelayProbe:
    """A 10 ms timer recording how late each timeout arrives."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_INTERVAL_MS)
        self.timer.timeout.connect(self._tick)
        self.delays: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        self.delays = []
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.delays.append(max(0.0, (now - self._last) * 1000.0 - PROBE_INTERVAL_MS))
        self._last = now


def run_events(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def measure(window: MainWindow, probe: DelayProbe, seconds: float) -> Phase:
    painted = window.orbit.frames_painted
    probe.start()
    start = time.perf_counter()
    run_events(seconds)
    elapsed = time.perf_counter() - start
    probe.stop()
    delays = np.array(probe.delays or [0.0])
    return Phase(fps=(window.orbit.frames_painted - painted) / elapsed, worst_delay_ms=float(delays.max()),
                 median_delay_ms=float(np.median(delays)))


def start_training(window: MainWindow) -> tuple[TrainingWorker, EngineBridge, dict[str, int]]:
    """A real training run on a worker thread whose events feed the window's live plots."""
    host = get_host()
    system = make_preset("kepler-batch")
    config = TrainConfig(epochs=100_000)
    counts = {"accepted": 0, "replay": 0}

    def on_accepted(event: StepAccepted, reference: np.ndarray | None) -> None:
        window.plots.add_accepted(event, reference)
        counts["accepted"] += len(event.systems)

    def on_replay(event: ReplayIteration) -> None:
        counts["replay"] += 1

    bridge = EngineBridge(host.predictors.create("freefall"), G=system.state.G, softening=system.state.softening)
    connect_queued(bridge.step_accepted, on_accepted)
    connect_queued(bridge.step_rejected, window.plots.add_rejected)
    connect_queued(bridge.epoch_ended, window.plots.add_epoch)
    connect_queued(bridge.replay_iteration, on_replay)
    window.plots.reset("train", n_systems=system.state.batch_size, energy_threshold=config.energy_threshold,
                       band=(config.E_lower, config.E_upper), reference_name="freefall")
    bridge.attach(host)
    worker = TrainingWorker(config, system.state, host=host, period=system.period)
    worker.start()
    return worker, bridge, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement phase (s)")
    parser.add_argument("--bodies", type=int, default=1000, help="bodies in the orbit view")
    parser.add_argument("--trail", type=int, default=100, help="trail points per body")
    parser.add_argument("--full-detail", action="store_true",
                        help="draw every trail point (no merging of sub-pixel trail segments)")
    args = parser.parse_args(argv)

    configure_runtime()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = MainWindow()
    window.resize(1400, 860)
    window.show()
    window.orbit.level_of_detail = not args.full_detail
    cluster = RotatingCluster(window, args.bodies, args.trail)
    feeder = QTimer()
    feeder.setInterval(FEED_INTERVAL_MS)
    feeder.timeout.connect(cluster.push)
    feeder.start()
    probe = DelayProbe()
    run_events(1.0)  # settle: first paints, layout

    idle = measure(window, probe, args.seconds)

    worker, bridge, counts = start_training(window)
    while counts["accepted"] == 0 and worker.is_running():  # skip the one-off model / optimizer set-up
        run_events(0.1)
    if not worker.is_running():
        worker.finalize()
        bridge.detach()
        outcome = worker.outcome
        print(f"training failed to start: {outcome.error if outcome else 'unknown'}", file=sys.stderr)
        return 2
    before = dict(counts)
    busy = measure(window, probe, args.seconds)
    busy.accepted_per_s = (counts["accepted"] - before["accepted"]) / args.seconds
    busy.replay_per_s = (counts["replay"] - before["replay"]) / args.seconds
    worker.shutdown()
    worker.finalize()
    bridge.detach()
    feeder.stop()
    window.close()
    app.processEvents()

    detail = "every trail point drawn" if args.full_detail else \
        f"sub-pixel trail segments merged (last stride {window.orbit.stride})"
    print(f"orbit view: {args.bodies} bodies, trails of {args.trail} points ({detail}), window 1400x860 "
          f"offscreen, redraw cap {FRAME_RATE:g} frames/s, {os.cpu_count()} CPU cores")
    print(f"training stopped: {idle.fps:6.1f} frames/s   10 ms timer delay: worst {idle.worst_delay_ms:6.1f} ms, "
          f"median {idle.median_delay_ms:5.2f} ms")
    print(f"training running: {busy.fps:6.1f} frames/s   10 ms timer delay: worst {busy.worst_delay_ms:6.1f} ms, "
          f"median {busy.median_delay_ms:5.2f} ms   (kepler-batch training: {busy.accepted_per_s:.0f} accepted "
          f"steps/s, {busy.replay_per_s:.1f} replay iterations/s)")
    ok = busy.fps >= REQUIRED_FPS and busy.worst_delay_ms < MAX_TIMER_DELAY_MS
    print(f"requirement (>= {REQUIRED_FPS:g} frames/s and worst delay < {MAX_TIMER_DELAY_MS:g} ms while training): "
          f"{'met' if ok else 'NOT met'}")
    print(f"{busy.fps:.1f} frames/s while training")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
