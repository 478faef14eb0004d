"""benchmarks/bench_fresh_rules.py: unseen draws against rules tuned over the span the predictor reached."""

from __future__ import annotations

import json

import pytest

from nbtoolkit import get_host
from nbtoolkit.training.trainset import TrainingSet

TABLES = [{"family": "kepler", "count": 3, "eccentricity": [0.0, 0.3]},
          {"family": "plummer", "count": 2, "n": [4, 5]}]


def test_the_first_draws_of_each_table_are_taken_with_their_table(load_benchmark):
    bench = load_benchmark("bench_fresh_rules")
    training_set = TrainingSet.from_tables(TABLES)
    picked = bench.first_of_each_table(training_set, 30, per_table=2)
    draws = training_set.draw(30)
    assert [t for t, _ in picked] == [0, 0, 1, 1]
    assert [d.family for _, d in picked] == ["kepler", "kepler", "plummer", "plummer"]
    assert picked[2][1].position.equal(draws[3].position)  # the plummer table starts after the 3 kepler draws
    assert len(bench.first_of_each_table(training_set, 30, per_table=5)) == 5  # a table gives at most its count


def test_a_timid_dt_needs_more_steps_than_the_tuned_rules_and_a_bold_one_fails_the_gate(load_benchmark):
    bench = load_benchmark("bench_fresh_rules")
    host = get_host()
    leapfrog = host.integrators.create("leapfrog")
    unit_orbit = {"family": "kepler", "count": 1, "eccentricity": [0.0, 0.3], "semi_major_axis": 1.0, "total_mass": 1.0}
    draw = TrainingSet.from_tables([unit_orbit]).draw(30)[0]  # a binary of period 2 pi
    timid = bench.compare(0, draw, host.predictors.create("constant", dt=1e-3), leapfrog, 20, host)
    assert timid.steps == 20 and timid.pass_fraction == 1.0 and timid.time == pytest.approx(0.02)
    # tuned over 0.02 time units (1/300 of the period), either rule crosses them in a few steps
    assert set(timid.rule_steps) == {"freefall", "aarseth"}
    assert all(s is not None and s < 5 for s in timid.rule_steps.values())
    assert timid.ratio == pytest.approx(20 / timid.best_rule) and timid.ratio > 4
    bold = bench.compare(0, draw, host.predictors.create("constant", dt=2.0), leapfrog, 4, host)
    assert bold.pass_fraction < 0.99
    rows = bench.family_rows([timid, bold])
    assert rows[-1]["family"] == "all" and rows[-1]["systems"] == 2
    assert rows[-1]["below_required"] == 1 and rows[-1]["lowest_pass"] == bold.pass_fraction
    assert rows[-1]["above_1"] == sum(r > 1 for r in (timid.ratio, bold.ratio) if r is not None)


def test_a_span_that_would_end_inside_a_close_passage_runs_on_to_a_quiet_step(load_benchmark):
    """Steps of 1e-3, five of 1e-4 (a close passage) from the 6th, then 1e-3 again: asked for 8 steps, the
    run goes on to the step after the first one at least as long as its median and its successor, the 12th."""
    bench = load_benchmark("bench_fresh_rules")
    host = get_host()
    unit_orbit = {"family": "kepler", "count": 1, "eccentricity": 0.0, "semi_major_axis": 1.0, "total_mass": 1.0}
    draw = TrainingSet.from_tables([unit_orbit]).draw(30)[0]
    constant = host.predictors.create("constant", dt=1e-3)

    class Passage:
        def __init__(self, first: int, last: int):
            self.calls, self.first, self.last = 0, first, last

        def __call__(self, state, history=None):
            self.calls += 1
            return constant(state) * (0.1 if self.first <= self.calls <= self.last else 1.0)

    leapfrog = host.integrators.create("leapfrog")
    passing = bench.compare(0, draw, Passage(6, 10), leapfrog, 8, host)
    assert passing.steps == 12 and passing.time == pytest.approx(7e-3 + 5e-4)
    quiet = bench.compare(0, draw, Passage(6, 10), leapfrog, 4, host)  # the 3rd step is not in the passage
    assert quiet.steps == 4

    class Plunge:  # every step shorter than the one before: never at the median again
        def __init__(self):
            self.calls = 0

        def __call__(self, state, history=None):
            self.calls += 1
            return constant(state) * 0.9 ** self.calls

    assert bench.compare(0, draw, Plunge(), leapfrog, 4, host).steps == 16  # at most four times the steps asked for


def test_main_prints_the_families_and_writes_every_system(load_benchmark, tmp_path, capsys):
    bench = load_benchmark("bench_fresh_rules")
    toml = tmp_path / "small.toml"
    toml.write_text('[[systems]]\nfamily = "kepler"\ncount = 2\neccentricity = [0.0, 0.3]\n')
    out = tmp_path / "rows.json"
    assert bench.main(["--training-set", str(toml), "--per-table", "1", "--steps", "6",
                       "--predictor", "constant:dt=0.001", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 systems of 'small' (seed 30, 1 per table), 6 steps of constant:dt=0.001" in printed
    assert "above 1: table 0 (kepler, N = 2): 6 steps against freefall" in printed
    saved = json.loads(out.read_text())
    assert saved["predictor"] == "constant:dt=0.001" and len(saved["systems"]) == 1
    assert saved["systems"][0]["steps"] == 6 and saved["systems"][0]["ratio"] > 1


def test_main_refuses_a_predictor_it_cannot_build(load_benchmark, capsys):
    bench = load_benchmark("bench_fresh_rules")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--predictor", "feedback:memory=8"])
    assert exc.value.code == 2
    assert "option 'memory' (8) must be >= option 'window' (32)" in capsys.readouterr().err


def test_a_pair_that_flies_apart_ends_its_span_once_it_has_dispersed(load_benchmark):
    """An unbound pair's dt grows geometrically once it has passed: the span ends where training would restart
    it, not after four times the steps asked (a time of 1e150 or more), and the tuned rules are measured over it."""
    bench = load_benchmark("bench_fresh_rules")
    host = get_host()
    flyby = {"family": "hyperbolic", "count": 1, "eccentricity": 2.0, "pericentre": 0.1, "distance": 10.0,
             "total_mass": 1.0, "mass_ratio": 1.0, "dim": 2}
    draw = TrainingSet.from_tables([flyby]).draw(30)[0]
    comparison = bench.compare(0, draw, host.predictors.create("freefall", eta=0.05),
                               host.integrators.create("leapfrog"), 64, host)
    assert 64 < comparison.steps < 256 and comparison.time < 1e6
    assert all(steps is not None for steps in comparison.rule_steps.values())
