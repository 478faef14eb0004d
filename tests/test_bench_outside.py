"""benchmarks/bench_outside.py: a learned run whose dt collapses is reported and counted as failing, and the
benchmark goes on to the next system."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_that_does_not_finish_is_a_failing_row_and_the_next_one_still_runs(tmp_path, monkeypatch, capsys,
                                                                                 load_benchmark):
    bench = load_benchmark("bench_outside")
    # one period of Kepler e = 0.1 takes the shipped model about 40 steps, of e = 0.97 a few hundred
    monkeypatch.setattr(bench, "SYSTEMS", [("slow", lambda: bench.kepler(0.97)), ("quick", lambda: bench.kepler(0.1))])
    monkeypatch.setattr(bench, "MAX_STEPS", 200)
    rules, out = tmp_path / "rules.json", tmp_path / "rows.json"
    rules.write_text(json.dumps([{"system": "slow", "freefall_steps": 1000}, {"system": "quick", "freefall_steps": 100}]))
    assert bench.main(["--rules", str(rules), "--json", str(out)]) == 0
    rows = {row["system"]: row for row in json.loads(out.read_text())}
    assert rows["slow"]["learned_steps"] is None and rows["slow"]["learned_pass"] == 0.0
    assert "max_steps=200" in rows["slow"]["unfinished"]
    assert 0 < rows["quick"]["learned_steps"] < 200 and rows["quick"]["learned_pass"] == 1.0
    text = capsys.readouterr().out
    assert "not finished" in text and "(1 not finished within 200 steps, counted at 0 %)" in text
