"""Part 2 replay speed: a Python loop over samples (the original way) against one batched computation.

For three systems (a Kepler orbit e = 0.9, the figure-eight, a 16-body Plummer sphere) a
replay buffer of 512 samples is filled with states along a simulated trajectory. One Part 2
minibatch evaluation + backward of the whole batch is then timed both ways in the same run:

* loop: for each sample, predict dt, step, measure |dE/E| and its loss (one system at a time,
  as the original did), then stack the losses and backpropagate;
* batched: :func:`nbtoolkit.training.evaluate_minibatch` on all samples at once, then backward.

Both compute the same objective (:func:`nbtoolkit.training.steps.batch_objective`) with the same
``mlp`` predictor (default architecture); the script checks that they agree per sample. It
prints samples/s for both and, last, the speed-up on the 512-sample Kepler batch (required: at
least 20x). Usage: ``python benchmarks/bench_replay.py [--batch 512] [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from nbtoolkit import get_host
from nbtoolkit.presets import make_preset
from nbtoolkit.simulate import simulate
from nbtoolkit.state import NBodyState
from nbtoolkit.training import (
    Minibatch,
    ReplayBuffer,
    TrainConfig,
    attempt_single_step,
    check_energy_threshold,
    compute_single_step_loss,
    evaluate_minibatch,
    sample_minibatch,
)
from nbtoolkit.training.steps import batch_objective

REQUIRED_SPEEDUP = 20.0


def trajectory_buffer(state: NBodyState, samples: int, eta: float) -> ReplayBuffer:
    """A buffer of ``samples`` consecutive states of ``state`` stepped with leapfrog + freefall(eta)."""
    host = get_host()
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("freefall", eta=eta),
                    steps=samples - 1)
    mass = torch.as_tensor(traj.mass).expand(samples, -1)
    states = NBodyState.from_arrays(mass, traj.position[:, 0], traj.velocity[:, 0], traj.time[:, 0],
                                    G=traj.G, softening=traj.softening)
    buffer = ReplayBuffer.like(states, samples)
    buffer.add(states, torch.as_tensor(traj.dt[:, 0].tolist() + [traj.dt[-1, 0]]), torch.zeros(samples, dtype=torch.float64))
    return buffer


def systems(samples: int) -> dict[str, ReplayBuffer]:
    return {
        "kepler e=0.9": trajectory_buffer(make_preset("kepler", eccentricity=0.9).state, samples, eta=0.01),
        "figure-eight": trajectory_buffer(make_preset("figure-eight").state, samples, eta=0.02),
        "plummer N=16": trajectory_buffer(make_preset("plummer", n=16, seed=1, softening=0.01).state, samples, eta=0.02),
    }


def loop_way(predictor, integrator, batch: Minibatch, config: TrainConfig) -> torch.Tensor:
    """One sample at a time (the original's Python loop); returns rel_dE (k,) after backward."""
    singles = [(batch.state.index(i), None if batch.history is None else batch.history.index(slice(i, i + 1)))
               for i in range(len(batch))]
    losses, rels = [], []
    for state, history in singles:
        dt = predictor(state, history)
        new = attempt_single_step(integrator, state, dt, config.n_steps)
        _, rel = check_energy_threshold(state, new, config.energy_threshold)
        losses.append(compute_single_step_loss(rel, config, dt))
        rels.append(rel.detach())
    rel_all = torch.cat(rels)
    predictor.zero_grad(set_to_none=True)
    batch_objective(torch.cat(losses), rel_all, config).backward()
    return rel_all


def batched_way(predictor, integrator, batch: Minibatch, config: TrainConfig) -> torch.Tensor:
    """The whole minibatch in one computation; returns rel_dE (k,) after backward."""
    _, losses, rel, _ = evaluate_minibatch(predictor, integrator, batch, config)
    predictor.zero_grad(set_to_none=True)
    batch_objective(losses, rel, config).backward()
    return rel


def best_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512, help="minibatch size (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both paths (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host = get_host()
    config = TrainConfig()
    integrator = host.integrators.create(config.integrator)
    predictor = host.predictors.create("mlp", seed=0, init_factor=0.05)
    print(f"Part 2 minibatch evaluation + backward, batch {args.batch}, leapfrog, mlp "
          f"(width {predictor.options['hidden_width']}, {predictor.options['hidden_layers']} layers), "
          f"{args.threads} thread(s), "
          f"best of {args.repeats}")
    print(f"{'system':<14} {'loop samples/s':>15} {'batched samples/s':>18} {'speed-up':>9} {'max |rel diff|':>15}")
    speedups = {}
    for name, buffer in systems(args.batch).items():
        batch = sample_minibatch(buffer, args.batch, torch.Generator().manual_seed(0))
        t_loop, rel_loop = best_time(partial(loop_way, predictor, integrator, batch, config), args.repeats)
        t_batch, rel_batch = best_time(partial(batched_way, predictor, integrator, batch, config), args.repeats)
        diff = float(((rel_loop - rel_batch).abs() / rel_batch.abs().clamp_min(1e-300)).max())
        speedups[name] = t_loop / t_batch
        k = len(batch)
        print(f"{name:<14} {k / t_loop:>15.0f} {k / t_batch:>18.0f} {speedups[name]:>8.1f}x {diff:>15.2e}")
    kepler = speedups["kepler e=0.9"]
    verdict = "meets" if kepler >= REQUIRED_SPEEDUP else "BELOW"
    print(f"speed-up on the {args.batch}-sample Kepler batch: {kepler:.1f}x ({verdict} the required {REQUIRED_SPEEDUP:.0f}x)")


if __name__ == "__main__":
    main()
