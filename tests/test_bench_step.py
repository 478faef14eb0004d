"""benchmarks/bench_step.py: its NumPy reference loop steps the same orbits as the torch leapfrog."""

from __future__ import annotations

from pathlib import Path

from nbtoolkit.presets import plummer

ROOT = Path(__file__).resolve().parents[1]


def test_the_numpy_loop_it_compares_against_matches_the_torch_leapfrog(load_benchmark):
    bench = load_benchmark("bench_step")
    state = plummer(n=5, seed=2, num_systems=2, softening=0.01)
    assert bench.numpy_matches_torch(state, steps=10) < 1e-12
