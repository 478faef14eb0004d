"""Throughput of the batched leapfrog: system-steps per second against one-system-at-a-time loops.

A "system-step" is one system advanced by one KDK leapfrog step. For N = 3, 16, 64 bodies and
B = 1 and 1024 systems (Plummer spheres in Hénon units, softening 0.01, float64, dt = 1e-3) it
times

* the registry's ``leapfrog`` integrator stepping the whole batch at once (torch, no autograd);
* a plain NumPy KDK loop, one system after another, vectorised over particles only;
* REBOUND's ``leapfrog`` (when ``import rebound`` works; it is not a dependency), one
  simulation per system, stepped one after another.

The loops over 1024 systems time a subset of the systems (``--subset``) and report the rate
per system-step, which is what the whole batch would take one system at a time. Each
measurement runs for about ``--seconds`` seconds and reports the best of three runs. The
machine should be otherwise idle: on a machine with few cores another busy process can slow
torch's multi-threaded kernels several-fold (the load average at start is printed).

Run: ``python benchmarks/bench_step.py [--seconds 1.0] [--subset 32]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from nbtoolkit import get_host
from nbtoolkit.presets import plummer
from nbtoolkit.state import NBodyState

SIZES = (3, 16, 64)
BATCHES = (1, 1024)
SOFTENING = 0.01
DT = 1e-3

try:
    import rebound
except ImportError:
    rebound = None


@dataclass
class Row:
    n: int
    batch: int
    batched: float
    numpy: float
    rebound: float | None
    looped_systems: int

    @property
    def ratio(self) -> float:
        return self.batched / self.numpy


def timed_rate(run: Callable[[int], None], work_per_step: int, seconds: float, repeats: int = 3, min_steps: int = 3) -> float:
    """Units of work per second of ``run(steps)``, best of ``repeats`` timed runs (as timeit does:
    the fastest run is the one least disturbed by other processes). A short calibration run
    picks the step count so that the timed runs last about ``seconds`` in all."""
    start = time.perf_counter()
    run(min_steps)
    per_step = (time.perf_counter() - start) / min_steps
    steps = max(min_steps, int(seconds / repeats / max(per_step, 1e-9)))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        best = max(best, work_per_step * steps / (time.perf_counter() - start))
    return best


# ----------------------------------------------------------------------------- batched torch
def batched_rate(state: NBodyState, seconds: float) -> tuple[float, NBodyState]:
    """System-steps per second of the registry leapfrog on the whole batch (and the state reached)."""
    integrator = get_host().integrators.create("leapfrog")
    dt = torch.full((state.batch_size,), DT, dtype=state.dtype)
    current = integrator.step(state, dt)  # fills the acceleration cache: one force evaluation per step from here

    def run(steps: int) -> None:
        nonlocal current
        for _ in range(steps):
            current = integrator.step(current, dt)

    return timed_rate(run, state.batch_size, seconds), current


# ----------------------------------------------------------------------------- NumPy loop
def numpy_accelerations(mass: np.ndarray, position: np.ndarray, G: float, eps2: float) -> np.ndarray:
    """a_i = G sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^{3/2} for one system: (N,), (N, D) -> (N, D)."""
    disp = position[None, :, :] - position[:, None, :]
    d2 = np.einsum("ijk,ijk->ij", disp, disp) + eps2
    np.fill_diagonal(d2, 1.0)
    weight = d2 ** -1.5 * mass[None, :]
    np.fill_diagonal(weight, 0.0)
    return G * np.einsum("ij,ijk->ik", weight, disp)


class NumpySystem:
    """One system advanced by the same KDK scheme as the torch leapfrog, with its acceleration cached."""

    def __init__(self, state: NBodyState, index: int) -> None:
        data = state.index(index).numpy()
        self.mass = data["mass"][0].copy()
        self.x = data["position"][0].copy()
        self.v = data["velocity"][0].copy()
        self.G, self.eps2 = state.G, state.softening**2
        self.a = numpy_accelerations(self.mass, self.x, self.G, self.eps2)

    def steps(self, count: int, dt: float) -> None:
        for _ in range(count):
            self.v += 0.5 * dt * self.a
            self.x += dt * self.v
            self.a = numpy_accelerations(self.mass, self.x, self.G, self.eps2)
            self.v += 0.5 * dt * self.a


def numpy_rate(state: NBodyState, systems: int, seconds: float) -> float:
    loop = [NumpySystem(state, i) for i in range(systems)]

    def run(steps: int) -> None:
        for system in loop:
            system.steps(steps, DT)

    return timed_rate(run, systems, seconds)


def numpy_matches_torch(state: NBodyState, steps: int = 20) -> float:
    """Largest position difference between the NumPy loop and the torch leapfrog after ``steps``."""
    integrator = get_host().integrators.create("leapfrog")
    dt = torch.full((state.batch_size,), DT, dtype=state.dtype)
    current = state
    for _ in range(steps):
        current = integrator.step(current, dt)
    worst = 0.0
    for i in range(state.batch_size):
        system = NumpySystem(state, i)
        system.steps(steps, DT)
        worst = max(worst, float(np.abs(system.x - current.position[i].numpy()).max()))
    return worst


# ----------------------------------------------------------------------------- REBOUND
def rebound_rate(state: NBodyState, systems: int, seconds: float) -> float:
    """System-steps per second of REBOUND's leapfrog (drift-kick-drift), one simulation per system."""
    sims: list[Any] = []
    data = state.numpy()
    for i in range(systems):
        sim = rebound.Simulation()
        sim.G = state.G
        sim.softening = state.softening
        sim.integrator = "leapfrog"
        sim.dt = DT
        for m, x, v in zip(data["mass"][i], data["position"][i], data["velocity"][i], strict=True):
            sim.add(m=float(m), x=float(x[0]), y=float(x[1]), z=float(x[2]), vx=float(v[0]), vy=float(v[1]), vz=float(v[2]))
        sims.append(sim)

    def run(steps: int) -> None:
        for sim in sims:
            if hasattr(sim, "steps"):
                sim.steps(steps)
            else:  # older REBOUND: integrate to a time without shortening the last step
                sim.integrate(sim.t + steps * DT, exact_finish_time=0)

    return timed_rate(run, systems, seconds)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="target duration of each timed run (s)")
    parser.add_argument("--subset", type=int, default=32,
                        help="systems timed by the one-at-a-time loops when B is larger (rate extrapolated per system-step)")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs ({platform.machine()}), load average {os.getloadavg()[0]:.2f} at start; "
          f"float64, softening {SOFTENING}, dt {DT}; best of 3 timed runs per cell")
    if rebound is None:
        print("REBOUND is not installed (`import rebound` failed): its column is skipped.")
    else:
        print(f"REBOUND {rebound.__version__}: integrator 'leapfrog' (drift-kick-drift), direct summation.")

    rows: list[Row] = []
    with torch.no_grad():
        for n in SIZES:
            for batch in BATCHES:
                state = plummer(n=n, seed=n, dim=3, softening=SOFTENING, num_systems=batch)
                deviation = numpy_matches_torch(state.index(slice(0, 2)))
                if deviation > 1e-10:
                    raise RuntimeError(f"NumPy loop disagrees with the torch leapfrog by {deviation:.3g} (N = {n})")
                looped = min(batch, args.subset)
                batched, _ = batched_rate(state, args.seconds)
                numpy_loop = numpy_rate(state, looped, args.seconds)
                reb = rebound_rate(state, looped, args.seconds) if rebound is not None else None
                rows.append(Row(n, batch, batched, numpy_loop, reb, looped))

    print()
    header = f"{'N':>4} {'B':>6} {'batched steps/s':>16} {'numpy steps/s':>14} {'rebound steps/s':>16} {'batched/numpy':>14}"
    print(header)
    print("-" * len(header))
    for row in rows:
        reb = f"{row.rebound:16.4g}" if row.rebound is not None else f"{'n/a':>16}"
        print(f"{row.n:>4} {row.batch:>6} {row.batched:16.4g} {row.numpy:14.4g} {reb} {row.ratio:14.3g}")
    subsets = sorted({row.looped_systems for row in rows if row.looped_systems < row.batch})
    if subsets:
        print(f"(steps/s are system-steps per second; for B = {max(BATCHES)} the NumPy"
              f"{'' if rebound is None else ' and REBOUND'} loops timed {', '.join(map(str, subsets))} of the systems "
              "and the rate is per system-step, i.e. extrapolated to the whole batch)")
    key = next(row for row in rows if row.n == 3 and row.batch == 1024)
    print(f"batched/NumPy ratio for N = 3, B = 1024: {key.ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
