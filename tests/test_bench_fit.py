"""benchmarks/bench_fit.py: the raw-dt errors it reports are those of the model's own dt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nbtoolkit import get_host
from nbtoolkit.contracts import checked_step
from nbtoolkit.physics import state_energy
from nbtoolkit.training.trainset import TrainingSet, pad_systems

ROOT = Path(__file__).resolve().parents[1]
TABLES = [{"family": "kepler", "count": 3, "eccentricity": [0.2, 0.6]}, {"family": "figure-eight", "count": 1}]


def test_raw_errors_are_one_step_at_the_uncalibrated_dt(load_benchmark):
    bench = load_benchmark("bench_fit")
    host = get_host()
    predictor = host.predictors.create("learned", feedback=False)
    leapfrog = host.integrators.create("leapfrog")
    draws, table = bench.draw_tables(TrainingSet.from_tables(TABLES), per_table=2, seed=3)
    assert table == [0, 0, 1]  # two of the first table, the second has only one system
    state = pad_systems(draws)
    errors, factors = bench.raw_errors(predictor, leapfrog, state, steps=3)
    assert errors.shape == factors.shape == (3, 3)
    with torch.no_grad():  # the first row by hand: one step at exp(log_dt), the factor of each state's class
        raw = predictor.log_dt(state).exp()
        e0 = state_energy(state)
        expected = ((state_energy(checked_step(leapfrog, state, raw)) - e0) / e0).abs()
        dt, classes = predictor.predict_with_class(state)
    torch.testing.assert_close(errors[0], expected, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(factors[0], torch.tensor([predictor.safety[c] for c in classes.tolist()],
                                                        dtype=torch.float64), rtol=1e-9, atol=0.0)
    # the rollout moves on with the calibrated dt, so the second row is a new state's
    assert not torch.equal(errors[1], errors[0])


def test_main_prints_one_row_per_table(tmp_path, capsys, load_benchmark):
    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[train]\nE_lower = 1e-4\nE_upper = 1.6e-4\n'
                    + "".join(f"[[systems]]\nfamily = \"{t['family']}\"\ncount = {t['count']}\n" for t in TABLES))
    out = tmp_path / "rows.json"
    bench = load_benchmark("bench_fit")
    assert bench.main(["--training-set", str(toml), "--per-table", "1", "--steps", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "band [0.0001, 0.00016]" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [(r["table"], r["family"], r["systems"], r["states"]) for r in rows] == \
        [(1, "kepler", 1, 4), (2, "figure-eight", 1, 4)]
    for r in rows:
        q10, q50, q90 = r["raw_error_quantiles"]
        assert 0 < q10 <= q50 <= q90 < 1e-2  # a trained model's raw steps are near the band, not far off
        assert 0 <= r["below_band"] <= 1 and 0 <= r["above_gate"] <= 1
        assert math.isfinite(r["median_factor"])


def test_a_history_reading_model_is_flown_with_its_history(load_benchmark):
    """The network, whose one evaluation per state gives both the calibrated and the raw dt, sees the
    states flown so far, as in simulate."""
    bench = load_benchmark("bench_fit")
    host = get_host()
    predictor = host.predictors.create("mlp", hidden_width=8, seed=0, history_len=2)
    seen = []
    original = predictor.predict_with_class

    def spy(state, history=None):
        seen.append(None if history is None else history.mask.sum(-1).tolist())
        return original(state, history)

    predictor.predict_with_class = spy
    draws, _ = bench.draw_tables(TrainingSet.from_tables(TABLES[:1]), per_table=2, seed=3)
    bench.raw_errors(predictor, host.integrators.create("leapfrog"), pad_systems(draws), steps=3)
    assert seen == [[0, 0], [1, 1], [2, 2]]
