"""benchmarks/bench_outside.py: a learned run whose dt collapses is reported and counted as failing, and the
benchmark goes on to the next system."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nbtoolkit.physics import angular_momentum, total_energy

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



def test_the_hyperbolic_pair_has_its_eccentricity_and_pericentre_and_spans_the_passage(load_benchmark):
    bench = load_benchmark("bench_outside")
    for e in (1.5, 10.0):
        system = bench.hyperbolic(e, pericentre=0.1, start=50.0)
        state = system.state
        x, v = state.position[0, 1] - state.position[0, 0], state.velocity[0, 1] - state.velocity[0, 0]
        # the relative orbit (G M = 1; reduced mass 0.25): E = 1 / (2 |a|), h^2 = p = q (1 + e)
        a = 0.1 / (e - 1)
        energy = float(total_energy(state.mass, state.position, state.velocity)[0]) / 0.25
        h = float(angular_momentum(state.mass, state.position, state.velocity).norm()) / 0.25
        assert energy == pytest.approx(1 / (2 * a), rel=1e-12) and h ** 2 == pytest.approx(0.1 * (1 + e), rel=1e-12)
        assert float(state.position[0].sum(0).abs().max()) < 1e-15 and float(state.velocity[0].sum(0).abs().max()) < 1e-15
        # 50 pericentre distances out and inbound, at the radial speed of r = a (e cosh F - 1)
        r, radial = float(x.norm()), float(x @ v) / float(x.norm())
        f = math.acosh((r / a + 1) / e)
        assert r == pytest.approx(5.0) and radial == pytest.approx(-e * math.sinh(f) / (math.sqrt(a) * (e * math.cosh(f) - 1)))
        # the span: out again as far as it came in, twice the time to pericentre by Kepler's equation
        assert float(system.period[0]) == pytest.approx(2 * a ** 1.5 * (e * math.sinh(f) - f), rel=1e-12)


def test_no_error_cap_flies_the_network_as_learned_flew_without_it(tmp_path, load_benchmark):
    """--no-error-cap is learned:error_cap=false: on the rigid Lagrange triangle, which the cap shortens, the two
    runs take different numbers of steps, and the flag's is that of the predictor built with the option."""
    from nbtoolkit.evaluate import evaluate_predictor
    from nbtoolkit.plugin_manager import get_host

    bench = load_benchmark("bench_outside")
    name = "lagrange triangle t=10"
    build = dict(bench.SYSTEMS)[name]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"system": name, "freefall_steps": 27}]))
    steps = {}
    for flags in ([], ["--no-error-cap"]):
        out = tmp_path / f"rows{len(flags)}.json"
        assert bench.main(["--rules", str(rules), "--json", str(out), "--only", "lagrange triangle", *flags]) == 0
        steps[bool(flags)] = json.loads(out.read_text())[0]["learned_steps"]
    host = get_host()
    uncapped = evaluate_predictor(build(), host.integrators.create("leapfrog"),
                                  host.predictors.create("learned", error_cap=False), orbits=1.0, threshold=2e-4)[0]
    assert steps[True] == uncapped.steps and steps[False] < steps[True]
