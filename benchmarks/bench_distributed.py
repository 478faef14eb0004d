"""Throughput of data-parallel training at 1, 2 and 4 processes on one machine.

Trains ``kepler-batch`` with ``--orbits`` systems (default 64, e in [0.5, 0.95]) with the
default ``mlp`` predictor and ``leapfrog``, on W gloo processes (one CPU thread each), started
with ``torch.multiprocessing`` exactly as ``torchrun`` would start them. Per world size, one
warm-up epoch, then ``--epochs`` timed epochs; Part 1 and Part 2 are timed separately on rank 0
(both end in a collective, so every rank finishes them together).

Figures per world size: accepted Part 1 steps per second (all ranks together), replayed Part 2
samples per second (samples of the global minibatch times iterations), and the scaling
efficiency: throughput / (W x throughput of one process). ``bound`` is the Part 1 speed-up that W
processes could reach with free communication and a core each, measured in the same run: W times
one process's accepted steps/s on B / W systems, over one process's on all B. A Part 1 round
costs one process about the same at 32 as at 64 two-body systems (its time goes to per-operation
overhead, not arithmetic), so at 64 systems the bound for 2 processes is about 1, whatever the
number of cores. Every Part 1 round and every Part 2
iteration costs one ``all_gather`` of nine numbers (in Part 1 they also say whether each rank
still collects) and, when a step is taken, one ``all_reduce`` of the model's gradients (a few
thousand float64), so with a small model and few systems per rank the communication latency,
not the arithmetic, bounds the speed-up; and W processes on fewer than W cores share them.

Run: ``python benchmarks/bench_distributed.py [--orbits 64] [--epochs 2] [--worlds 1 2 4]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig, Trainer
from nbtoolkit.training import trainer as trainer_module
from nbtoolkit.training.distributed import DataParallel


def _timed(name: str, times: dict[str, Any]) -> None:
    """Wrap ``trainer_module.<name>`` so that its wall time and result are kept in ``times``."""
    inner = getattr(trainer_module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        times.setdefault(name, []).append((time.perf_counter() - start, out))
        return out

    setattr(trainer_module, name, wrapper)


def _rank(rank: int, world: int, init: str, out: str, orbits: int, epochs: int, tag: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        times: dict[str, Any] = {}
        _timed("collect_trajectory", times)
        _timed("generalize_on_trajectory", times)
        system = make_preset("kepler-batch", num_orbits=orbits, e_min=0.5, e_max=0.95, seed=1)
        config = TrainConfig(epochs=1 + epochs, steps_per_epoch=32, seed=1, calibrate_pass_rate=0.0, replay_steps=50)
        trainer = Trainer(config, system, collective=DataParallel())
        trainer.fit()
        if rank == 0:
            collect = times["collect_trajectory"][1:]
            replay = times["generalize_on_trajectory"][1:]
            accepted = sum(int(r.accepted.sum()) for _, r in collect) * world
            samples = sum(r.iterations * r.batch_size for _, r in replay)
            torch.save({"steps_per_s": accepted / sum(t for t, _ in collect),
                        "samples_per_s": samples / max(sum(t for t, _ in replay), 1e-12)}, Path(out) / f"{tag}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orbits", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    out = tempfile.mkdtemp()

    def run(world: int, orbits: int) -> dict[str, float]:
        tag = f"w{world}-b{orbits}"
        try:
            mp.start_processes(_rank, args=(world, os.path.join(out, f"init-{tag}"), out, orbits, args.epochs, tag),
                               nprocs=world, start_method="spawn")
        except mp.ProcessExitedException as exc:
            # gloo's worker threads now and then abort a process as it exits (about one run in ten here), after
            # rank 0 has written its figures: keep them, say so
            if not (Path(out) / f"{tag}.pt").exists():
                raise
            print(f"({world} process(es), {orbits} systems: {exc} after the figures were written)", file=sys.stderr)
        return torch.load(Path(out) / f"{tag}.pt")

    print(f"kepler-batch, {args.orbits} systems, {args.epochs} timed epochs; {os.cpu_count()} CPUs")
    print(f"{'processes':>9}  {'accepted steps/s':>16}  {'efficiency':>10}  {'bound':>6}  {'replayed samples/s':>18}  "
          f"{'efficiency':>10}")
    one = run(1, args.orbits)
    for world in args.worlds:
        r = one if world == 1 else run(world, args.orbits)
        # the speed-up W processes could reach with free communication and a core each: W times one process's
        # accepted steps/s on its shard of B / W systems, over one process's on all B
        bound = 1.0 if world == 1 else world * run(1, max(args.orbits // world, 1))["steps_per_s"] / one["steps_per_s"]
        print(f"{world:>9}  {r['steps_per_s']:>16.1f}  {r['steps_per_s'] / (world * one['steps_per_s']):>10.2f}  "
              f"{bound:>6.2f}  {r['samples_per_s']:>18.1f}  {r['samples_per_s'] / (world * one['samples_per_s']):>10.2f}")


if __name__ == "__main__":
    main()
