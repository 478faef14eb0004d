"""benchmarks/bench_fresh.py: unseen draws flown per batch of equal N, their pass rates and the times reached."""

from __future__ import annotations

import json

import pytest

from nbtoolkit import get_host
from nbtoolkit.training.trainset import TrainingSet

TABLES = [{"family": "kepler", "count": 3, "eccentricity": [0.0, 0.3]},
          {"family": "plummer", "count": 2, "n": [4, 5]}]


@pytest.fixture
def draws():
    return TrainingSet.from_tables(TABLES).draw(20)


def test_flights_keep_the_order_of_the_draws_and_measure_each_system(load_benchmark, draws):
    bench = load_benchmark("bench_fresh")
    host = get_host()
    leapfrog = host.integrators.create("leapfrog")
    small = bench.fly_draws(draws, lambda: host.predictors.create("constant", dt=1e-4), leapfrog, steps=8)
    assert [f.family for f in small] == [d.family for d in draws]
    assert all(f.steps == 8 and f.pass_fraction == 1.0 for f in small)
    assert [f.time for f in small] == pytest.approx([8e-4] * len(draws))
    # a dt far too long for the tightest orbit fails the gate: the binaries (periods of order 1-10) fail most steps
    bold = bench.fly_draws(draws, lambda: host.predictors.create("constant", dt=0.5), leapfrog, steps=8)
    assert any(f.pass_fraction < 0.99 for f in bold)
    rows = bench.family_rows(small, bold)
    overall = rows[-1]
    assert overall["family"] == "all" and overall["systems"] == len(draws)
    assert overall["network_below"] == 0 and overall["predictor_below"] == sum(f.pass_fraction < 0.99 for f in bold)
    assert overall["time_ratio"] == pytest.approx(0.5 / 1e-4)


def test_a_system_whose_run_stops_counts_with_the_steps_it_took(load_benchmark, draws):
    bench = load_benchmark("bench_fresh")
    host = get_host()

    class StopsAtThirdCall:
        def __init__(self):
            self.calls = 0

        def __call__(self, state, history=None):
            self.calls += 1
            return host.predictors.create("constant", dt=1e-4)(state) * (float("nan") if self.calls == 3 else 1.0)

    flights = bench.fly_draws(draws[:2], StopsAtThirdCall, host.integrators.create("leapfrog"), steps=8)
    assert [f.steps for f in flights] == [2, 2] and [f.time for f in flights] == pytest.approx([2e-4, 2e-4])


def test_main_compares_the_predictor_it_is_given_with_the_network_alone(load_benchmark, tmp_path, capsys):
    bench = load_benchmark("bench_fresh")
    toml = tmp_path / "small.toml"
    toml.write_text('[[systems]]\nfamily = "kepler"\ncount = 2\neccentricity = [0.0, 0.3]\n\n'
                    '[[systems]]\nfamily = "plummer"\ncount = 1\nn = [4, 5]\n')
    out = tmp_path / "flights.json"
    spec = "feedback:base=freefall,eta=0.02"
    assert bench.main(["--training-set", str(toml), "--seeds", "20", "--steps", "4", "--predictor", spec,
                       "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{spec}: <99 %" in printed and f"time reached, {spec} / network" in printed
    saved = json.loads(out.read_text())
    assert saved["predictor"] == spec and [f["steps"] for f in saved["compared"]] == [4, 4, 4]
    assert saved["rows"][-1]["systems"] == 3


def test_main_refuses_a_predictor_it_cannot_build_before_any_flight(load_benchmark, capsys):
    bench = load_benchmark("bench_fresh")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--predictor", "feedback:memory=8", "--steps", "4"])
    assert exc.value.code == 2
    assert "option 'memory' (8) must be >= option 'window' (32)" in capsys.readouterr().err


def test_a_system_that_disperses_ends_its_flight_and_leaves_the_time_ratio(load_benchmark):
    bench = load_benchmark("bench_fresh")
    host = get_host()
    mixed = TrainingSet.from_tables([{"family": "hyperbolic", "count": 1, "eccentricity": [2.0, 2.0],
                                      "distance": [10.0, 10.0]},
                                     {"family": "kepler", "count": 1, "eccentricity": [0.0, 0.3]}]).draw(20)
    rule = lambda: host.predictors.create("aarseth", eta=0.02)  # noqa: E731
    flyby, orbit = bench.fly_draws(mixed, rule, host.integrators.create("leapfrog"), steps=3000)
    # the pair passes, recedes with a dt growing with its separation, and ends long before 3000 steps;
    # the bound orbit flies on for all of them
    assert flyby.dispersed and 50 < flyby.steps < 3000 and flyby.pass_fraction == 1.0
    assert not orbit.dispersed and orbit.steps == 3000
    same_bound = bench.Flight("kepler", 3000, 1.0, 2 * orbit.time)
    rows = bench.family_rows([flyby, orbit], [flyby, same_bound])
    assert rows[-1]["time_ratio"] == pytest.approx(2.0)  # the flyby's ratio (1) is left out
