"""benchmarks/bench_step.py: its NumPy reference loop steps the same orbits as the torch leapfrog."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from nbtoolkit.presets import plummer

ROOT = Path(__file__).resolve().parents[1]


def test_the_numpy_loop_it_compares_against_matches_the_torch_leapfrog():
    spec = importlib.util.spec_from_file_location("bench_step", ROOT / "benchmarks" / "bench_step.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = bench
    try:
        spec.loader.exec_module(bench)
        state = plummer(n=5, seed=2, num_systems=2, softening=0.01)
        assert bench.numpy_matches_torch(state, steps=10) < 1e-12
    finally:
        sys.modules.pop("bench_step", None)
