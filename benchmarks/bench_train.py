"""Where one training epoch spends its time, with the previous force kernel and the current one.

Two workloads, each trained through the public API (``TrainConfig``, ``Trainer``,
``make_preset``) with the default ``mlp`` predictor and ``leapfrog``:

* ``kepler-batch``: ``--orbits`` Kepler orbits with e in [0.5, 0.95] (N = 2);
* Plummer-32: ``--plummer-systems`` Plummer spheres of 32 bodies (softening 0.01).

For each, a warm-up epoch is run, then one timed epoch per kernel, alternating previous and
current kernel ``--repeats`` times from the same trainer state (the best epoch of each is
kept). Figures:

* Part 1 (collection): accepted steps per second;
* Part 2 (replay): replayed samples per second (samples evaluated by minibatch evaluations);
* inclusive wall time in: pair features of the predictor, the force kernel (forward), the
  energies the gate measures (forward), autograd backward passes (all of them, including the kernel's backward),
  the optimizer update, as fractions of the epoch.

The previous kernel is the (B, N, N, D) formulation the chunked kernel replaced, swapped in
by patching the module attributes through which nbtoolkit calls it. Timing wrappers are
installed the same way (a missing attribute is reported and skipped).

Run: ``python benchmarks/bench_train.py [--orbits 64] [--plummer-systems 16] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nbtoolkit.presets import make_preset
from nbtoolkit.threads import apply_thread_policy
from nbtoolkit.training import TrainConfig, Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import previous_accelerations  # noqa: E402


def previous_potential(mass: torch.Tensor, position: torch.Tensor, G: float = 1.0, softening: float = 0.0) -> torch.Tensor:
    """The potential energy before the chunked rewrite ((B, N, N, D) displacements)."""
    off = 1 - torch.eye(position.shape[-2], dtype=position.dtype, device=position.device)
    disp = position.unsqueeze(-3) - position.unsqueeze(-2)
    d2 = disp.square().sum(-1) + (softening**2 + 1 - off)
    return -0.5 * G * (mass.unsqueeze(-1) * mass.unsqueeze(-2) * d2.rsqrt() * off).sum((-1, -2))


#: (module, attribute) through which nbtoolkit reaches the force kernel and the potential
KERNEL_SITES = [("nbtoolkit.physics", "accelerations"), ("nbtoolkit.contracts.integrator", "accelerations"),
                ("nbtoolkit_pefrl.integrator", "accelerations")]
POTENTIAL_SITES = [("nbtoolkit.physics", "potential_energy")]
#: timed categories: (label, [(module, attribute), ...])
CATEGORIES = [
    ("Part 1", [("nbtoolkit.training.trainer", "collect_trajectory")]),
    ("Part 2", [("nbtoolkit.training.trainer", "generalize_on_trajectory")]),
    ("features", [("plugins.mlp_predictor", "pair_features"), ("plugins.mlp_predictor", "history_features")]),
    ("force kernel", KERNEL_SITES),
    ("energies", [("nbtoolkit.gate", "state_energy")]),
    ("autograd", [("torch.autograd", "backward")]),
]


class Patches:
    """Replaces module attributes for the duration of a ``with`` block and restores them."""

    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, Any]] = []
        self.missing: set[str] = set()

    def set(self, module_name: str, attr: str, make: Callable[[Any], Any]) -> None:
        module = sys.modules.get(module_name)
        if module is None or not hasattr(module, attr):
            self.missing.add(f"{module_name}.{attr}")
            return
        old = getattr(module, attr)
        self.saved.append((module, attr, old))
        setattr(module, attr, make(old))

    def restore(self) -> None:
        for module, attr, old in reversed(self.saved):
            setattr(module, attr, old)
        self.saved.clear()


class Clock:
    """Inclusive wall time per category (re-entrant calls of one category are counted once)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.depth: dict[str, int] = defaultdict(int)
        self.samples = 0

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth[label] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[label] -= 1
                if self.depth[label] == 0:
                    self.total[label] += time.perf_counter() - start
        return timed


@contextmanager
def instrumented(trainer: Trainer, kernel: str, clock: Clock) -> Iterator[Patches]:
    patches = Patches()
    if kernel == "previous":
        for module, attr in KERNEL_SITES:
            patches.set(module, attr, lambda old: previous_accelerations)
        for module, attr in POTENTIAL_SITES:
            patches.set(module, attr, lambda old: previous_potential)
    for label, sites in CATEGORIES:
        for module, attr in sites:
            patches.set(module, attr, lambda old, label=label: clock.wrap(label, old))

    def count(old: Callable[..., Any]) -> Callable[..., Any]:
        def counted(predictor: Any, integrator: Any, minibatch: Any, *args: Any, **kwargs: Any) -> Any:
            clock.samples += len(minibatch)
            return old(predictor, integrator, minibatch, *args, **kwargs)
        return counted

    patches.set("nbtoolkit.training.replay", "evaluate_minibatch", count)
    step = trainer.optimizer.step
    trainer.optimizer.step = clock.wrap("optimizer", step)
    try:
        yield patches
    finally:
        trainer.optimizer.step = step
        patches.restore()


def run_epoch(trainer: Trainer, kernel: str) -> dict[str, Any]:
    clock = Clock()
    trainer.config = dataclasses.replace(trainer.config, epochs=trainer.epoch + 1)
    with instrumented(trainer, kernel, clock) as patches:
        start = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - start
    metrics = result.epoch_metrics[-1]
    return {"wall": wall, "accepted": metrics["accepted_steps"], "samples": clock.samples, "times": dict(clock.total),
            "missing": sorted(patches.missing)}


def workload(name: str, args: argparse.Namespace) -> tuple[Any, TrainConfig]:
    common: dict[str, Any] = dict(seed=0, on_retrain_limit="fallback", max_retrain_steps=200)
    if "calibrate_pass_rate" in {f.name for f in dataclasses.fields(TrainConfig)}:
        common["calibrate_pass_rate"] = 0.0  # the safety calibration after the last epoch is not part of an epoch
    if name == "kepler-batch":
        system = make_preset("kepler-batch", num_orbits=args.orbits, e_min=0.5, e_max=0.95)
        config = TrainConfig(steps_per_epoch=args.steps, replay_steps=args.replay_steps,
                             replay_batch_size=args.replay_batch, **common)
    else:
        system = make_preset("plummer", n=32, num_systems=args.plummer_systems, softening=0.01, seed=1)
        config = TrainConfig(steps_per_epoch=max(2, args.steps // 4), replay_steps=args.replay_steps,
                             replay_batch_size=args.replay_batch, **common)
    return system, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orbits", type=int, default=64, help="Kepler orbits in the kepler-batch workload")
    parser.add_argument("--plummer-systems", type=int, default=16, help="Plummer-32 systems in the second workload")
    parser.add_argument("--steps", type=int, default=32, help="accepted Part 1 steps per system and epoch (Plummer: a quarter)")
    parser.add_argument("--replay-steps", type=int, default=20, help="cap on Part 2 iterations per epoch")
    parser.add_argument("--replay-batch", type=int, default=512, help="Part 2 minibatch size")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per kernel (alternating)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: nbtoolkit's thread policy)")
    args = parser.parse_args(argv)
    apply_thread_policy(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs "
          f"({platform.machine()}), load average {os.getloadavg()[0]:.2f} at start; one epoch per kernel and repeat, "
          f"best of {args.repeats}")

    missing: set[str] = set()
    for name in ("kepler-batch", "plummer-32"):
        system, config = workload(name, args)
        trainer = Trainer(config, system)
        run_epoch(trainer, "current")  # warm-up: fills the replay buffer, loads everything
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeats):
            for kernel in ("previous", "current"):
                snapshot = copy.deepcopy((trainer.state, trainer.history, trainer.buffer, trainer.generator.get_state(),
                                          trainer.predictor.state_dict(), trainer.optimizer.state_dict(), trainer.epoch))
                run = run_epoch(trainer, kernel)
                missing.update(run["missing"])
                # rewind, so both kernels train the same epoch from the same state
                (trainer.state, trainer.history, trainer.buffer, gen, weights, opt, trainer.epoch) = snapshot
                trainer.generator.set_state(gen)
                trainer.predictor.load_state_dict(weights)
                trainer.optimizer.load_state_dict(opt)
                if kernel not in best or run["wall"] < best[kernel]["wall"]:
                    best[kernel] = run
        state = system.state
        print(f"\n{name}: B = {state.batch_size} systems of N = {state.n_bodies} bodies, "
              f"{config.steps_per_epoch} accepted steps per system, replay {config.replay_steps} x {config.replay_batch_size}")
        header = (f"{'kernel':>9} {'epoch s':>8} {'Part 1 s':>9} {'accepted/s':>11} {'Part 2 s':>9} {'samples/s':>10} "
                  f"{'features':>9} {'kernel':>8} {'energies':>9} {'autograd':>9} {'optimizer':>10}")
        print(header)
        print("-" * len(header))
        for kernel in ("previous", "current"):
            run = best[kernel]
            t = run["times"]
            p1, p2 = t.get("Part 1", 0.0), t.get("Part 2", 0.0)
            share = lambda key, t=t, run=run: f"{100 * t.get(key, 0.0) / run['wall']:8.0f}%"  # noqa: E731
            print(f"{kernel:>9} {run['wall']:8.2f} {p1:9.2f} {run['accepted'] / p1 if p1 else 0:11.4g} {p2:9.2f} "
                  f"{run['samples'] / p2 if p2 else 0:10.4g} {share('features'):>9} {share('force kernel'):>8} "
                  f"{share('energies'):>9} {share('autograd'):>9} {share('optimizer'):>10}")
        prev, cur = best["previous"], best["current"]
        print(f"current / previous: epoch {prev['wall'] / cur['wall']:.2f}x faster; accepted steps {cur['accepted']} vs "
              f"{prev['accepted']}, replayed samples {cur['samples']} vs {prev['samples']}")
    print("\n(features, kernel, energies, autograd and optimizer are inclusive wall times as a share of the epoch; "
          "the kernel's backward counts under autograd)")
    if missing:
        print(f"not instrumented (attribute not found): {', '.join(sorted(missing))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
