"""benchmarks/bench_longrun.py runs end to end on a tiny problem and prints its table and requirement line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_prints_every_row(capsys, load_benchmark):
    bench = load_benchmark("bench_longrun")
    assert bench.main(["--quick", "--periods", "2", "--t-end", "2", "--samples", "8", "--no-plot"]) == 0
    out = capsys.readouterr().out
    for row in ("constant dt", "free-fall (tuned)", "symmetric free-fall"):
        table_rows = [line for line in out.splitlines() if line.startswith(("Kepler e=0.9 ", "figure-eight "))]
        assert sum(row in line for line in table_rows) == 2, row
    assert "requirement (Kepler e = 0.9, 2 periods" in out


def test_growth_classes(load_benchmark):
    bench = load_benchmark("bench_longrun")
    t = np.geomspace(1, 1000, 40)
    assert bench.growth(t, 1e-6 * np.ones_like(t), 1e-15)[1] == "bounded"
    assert bench.growth(t, 1e-6 * t**0.5, 1e-15)[1] == "t^1/2"
    assert bench.growth(t, 1e-6 * t, 1e-15)[1] == "t"
    assert bench.growth(t, 1e-16 * np.ones_like(t), 1e-15)[1] == "at floor"
    assert bench.growth(t, np.full_like(t, np.nan), 1e-15)[1] == "unbound"
