"""What the learned dt costs in wall clock: its call against a step, and whole runs against the tuned rule.

``learned`` takes fewer steps than classical rules tuned for each system (``bench_generalization.py``),
but every call evaluates a small network on the pair features of the state, which costs more than a
free-fall rule does and, for a few bodies, more than the leapfrog step itself. This prints both sides,
measured in the same run, on one core:

* per call, one system of N = 2 (a Kepler orbit), 3, 16, 64 and 256 bodies (Plummer spheres): one
  ``leapfrog`` step, one call of the ``freefall`` rule and one of ``learned`` (the calibrated network in its
  controller), in microseconds (best of ``--repeat`` timings of 50 calls), and learned / step;
* whole runs, without a guard, of Kepler e = 0.9 (3 periods), the figure-eight (3 periods), Plummer-32 (seed 1)
  to t = 1 and Plummer-256 (seed 2) to t = 0.25, each flown with ``learned`` and with the ``freefall`` rule
  tuned for that system (:func:`nbtoolkit.evaluate.tune_rule`, not timed): steps, the run's wall time
  (best of ``--repeat``; a run's wall time includes the steps, the gate and the recording of the
  trajectory) and the ratios learned / tuned of steps and of wall time.

* the error cap's estimate (:mod:`nbtoolkit.shadow`) per call, for N = 64, 256 and 1024: the accelerations, jerks
  and dH2/dt at the three points of a step (a batch of 3 systems) in blocks of rows, the path taken from
  ``ROWS_MIN_N`` bodies on, against the same sums over the pairs i < j (the path below it), in milliseconds.

Where the ratio of wall times is above that of steps, the difference is the learned call; it pays for
itself where one step costs more than the call: many bodies, a costlier integrator, or forces computed
elsewhere.

``--compiled`` measures both sides with ``NBTOOLKIT_COMPILE=1`` (:mod:`nbtoolkit.compiled`): the learned
evaluation and, for N <= 32, the force kernel compiled by ``torch.compile``; compile time is excluded (every
figure is the best of several timings after an untimed call).

Run: ``python benchmarks/bench_predict.py [--repeat 3] [--quick] [--compiled]`` (under a minute, two with
``--compiled``; ``--quick`` leaves out N = 256, 1024 and Plummer-256).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from nbtoolkit import get_host, shadow
from nbtoolkit.compiled import COMPILE_ENV, compile_requested
from nbtoolkit.evaluate import GateReport, evaluate_predictor, tune_rule
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.presets import make_preset
from nbtoolkit.state import NBodyState, System

THRESHOLD = 2e-4


def best_time(call: Callable[[], object], repeat: int, number: int = 1) -> float:
    """Seconds per call of ``call``: the best of ``repeat`` timings of ``number`` calls (after one untimed call)."""
    call()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def one_system(n: int) -> NBodyState:
    """A Kepler orbit (e = 0.5) for n = 2, else a Plummer sphere of n bodies (seed 1)."""
    if n == 2:
        return make_preset("kepler", eccentricity=0.5).state
    return make_preset("plummer", n=n, seed=1).state


def runs(quick: bool) -> list[tuple[str, System, float]]:
    """(name, system, periods to run)."""
    one = torch.ones(1, dtype=torch.float64)
    out = [("kepler e=0.9, 3 periods", make_preset("kepler", eccentricity=0.9), 3.0),
           ("figure-eight, 3 periods", make_preset("figure-eight"), 3.0),
           ("plummer-32 t=1", System(make_preset("plummer", n=32, seed=1).state, one), 1.0)]
    if not quick:
        out.append(("plummer-256 t=0.25", System(make_preset("plummer", n=256, seed=2).state, 0.25 * one), 1.0))
    return out


def per_call(n: int, leapfrog: Any, freefall: DtPredictor, learned: DtPredictor, repeat: int) -> tuple[float, ...]:
    """Seconds per leapfrog step, freefall call and learned call on one system of n bodies."""
    state = one_system(n)
    dt = torch.full((1,), 1e-3, dtype=torch.float64)
    with torch.no_grad():
        return (best_time(lambda: leapfrog.step(state, dt), repeat, 50), best_time(lambda: freefall(state), repeat, 50),
                best_time(lambda: learned(state), repeat, 50))


def estimate_paths(n: int, repeat: int) -> tuple[float, float]:
    """Seconds per evaluation of dH2/dt at a step's three points of one Plummer sphere of n bodies: in row blocks
    and over the pairs i < j."""
    state = one_system(n)
    three = (state.mass.repeat(3, 1), state.position.repeat(3, 1, 1), state.velocity.repeat(3, 1, 1),
             float(state.G), float(state.softening))
    with torch.no_grad():
        return best_time(lambda: shadow._flow_rows(*three), repeat), best_time(lambda: shadow._flow_pairs(*three), repeat)


def whole_run(system: System, orbits: float, leapfrog: Any, predictor: DtPredictor, repeat: int) -> tuple[int, float]:
    """(steps, best wall seconds) of an unguarded run of ``system`` with ``predictor``."""
    reports: list[GateReport] = []
    wall = best_time(lambda: reports.append(evaluate_predictor(system, leapfrog, predictor, orbits=orbits,
                                                               threshold=THRESHOLD)[0]), repeat)
    return reports[-1].steps, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timings per figure; the best is printed")
    parser.add_argument("--quick", action="store_true", help="leave out N = 256, 1024 and Plummer-256")
    parser.add_argument("--compiled", action="store_true",
                        help=f"measure with {COMPILE_ENV}=1 (the compiled learned evaluation and force kernel)")
    args = parser.parse_args(argv)
    if args.compiled:
        os.environ[COMPILE_ENV] = "1"
    elif compile_requested():
        print(f"note: {COMPILE_ENV}=1 is set in the environment: every figure is of the compiled paths")
    torch.set_num_threads(1)
    host = get_host()
    leapfrog = host.integrators.create("leapfrog")
    freefall, learned = host.predictors.create("freefall"), host.predictors.create("learned")

    mode = "compiled (NBTOOLKIT_COMPILE=1, compile time excluded)" if compile_requested() else "eager"
    print(f"one call, one system (microseconds; {mode})")
    print(f"{'N':>5s} {'leapfrog step':>14s} {'freefall':>9s} {'learned':>9s} {'learned / step':>15s}")
    for n in (2, 3, 16, 64) + (() if args.quick else (256,)):
        step, rule, learn = per_call(n, leapfrog, freefall, learned, args.repeat)
        print(f"{n:5d} {1e6 * step:14.0f} {1e6 * rule:9.0f} {1e6 * learn:9.0f} {learn / step:15.1f}", flush=True)

    print(f"\nthe error cap's estimate, one call (milliseconds; the path in row blocks is taken from "
          f"N = {shadow.ROWS_MIN_N})")
    print(f"{'N':>5s} {'row blocks':>10s} {'pairs i < j':>11s} {'pairs / rows':>12s}")
    for n in (64,) + (() if args.quick else (256, 1024)):
        rows, pairs = estimate_paths(n, args.repeat)
        print(f"{n:5d} {1e3 * rows:10.2f} {1e3 * pairs:11.2f} {pairs / rows:12.1f}", flush=True)

    print("\nwhole runs, unguarded: learned against the freefall rule tuned for the system")
    print(f"{'system':26s} {'learned steps':>13s} {'tuned steps':>11s} {'learned s':>10s} {'tuned s':>8s} "
          f"{'steps ratio':>11s} {'time ratio':>10s}")
    for name, system, orbits in runs(args.quick):
        tuned = tune_rule(host, "freefall", system, leapfrog, orbits=orbits, threshold=THRESHOLD).predictor
        lsteps, lwall = whole_run(system, orbits, leapfrog, learned, args.repeat)
        tsteps, twall = whole_run(system, orbits, leapfrog, tuned, args.repeat)
        print(f"{name:26s} {lsteps:13d} {tsteps:11d} {lwall:10.3f} {twall:8.3f} {lsteps / tsteps:11.2f} "
              f"{lwall / twall:10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
