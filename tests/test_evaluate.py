"""Gate reports, tuning of classical rules by bisection, and the greedy oracle."""

from __future__ import annotations

import torch
from systems import two_body_orbit

from nbtoolkit.cli import main
from nbtoolkit.evaluate import evaluate_predictor, evaluate_tuned_rule, greedy_oracle, tune_scale
from nbtoolkit.state import System


def orbit(e: float) -> System:
    """The two-body orbit of :func:`two_body_orbit` with its period."""
    state, period = two_body_orbit(e=e)
    return System(state, torch.tensor([period], dtype=torch.float64))


def test_tuned_eta_passes_every_step_and_a_larger_one_does_not(host):
    system = orbit(e=0.7)
    leapfrog = host.integrators.create("leapfrog")
    eta = tune_scale(system, leapfrog, host.predictors.create("freefall", eta=1.0), orbits=1, rounds=2)
    (tuned,) = evaluate_predictor(system, leapfrog, host.predictors.create("freefall", eta=eta), orbits=1)
    (looser,) = evaluate_predictor(system, leapfrog, host.predictors.create("freefall", eta=1.3 * eta), orbits=1)
    assert tuned.pass_fraction == 1.0 and tuned.max_step_rel_dE <= 2e-4
    assert looser.pass_fraction < 1.0 and looser.steps < tuned.steps


def test_greedy_oracle_passes_the_gate_with_fewer_steps_than_a_tuned_rule(host):
    system = orbit(e=0.8)
    leapfrog = host.integrators.create("leapfrog")
    oracle = greedy_oracle(system, leapfrog, orbits=1)
    eta = tune_scale(system, leapfrog, host.predictors.create("aarseth", eta=1.0), orbits=1, rounds=2)
    (rule,) = evaluate_predictor(system, leapfrog, host.predictors.create("aarseth", eta=eta), orbits=1)
    assert oracle["max_step_rel_dE"] <= 2e-4
    assert oracle["steps"] < rule.steps
    assert oracle["max_step_rel_dE"] > 0.5 * 2e-4  # it really pushes each step up to the gate


def test_gate_report_counts_failures_per_system(host):
    s1, p1 = two_body_orbit(e=0.1)
    s2, p2 = two_body_orbit(e=0.9)
    period = torch.tensor([p1, p2], dtype=torch.float64)
    reports = evaluate_predictor(System(s1.cat([s1, s2]), period), host.integrators.create("leapfrog"),
                                 host.predictors.create("constant", dt=0.02), orbits=1)
    assert reports[0].pass_fraction == 1.0 and reports[1].pass_fraction < 1.0
    assert reports[0].steps == round(p1 / 0.02 + 0.5)


def test_evaluate_command_prints_a_table(capsys):
    assert main(["evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1",
                 "--rules", "freefall", "--oracle"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["predictor", "steps", "force"]
    assert out[1].startswith("system 0: freefall (eta=") and out[2].startswith("system 0: greedy oracle")


def test_tune_rule_tunes_eta_of_a_rule_and_dt_of_the_constant_rule(host):
    from nbtoolkit.evaluate import tune_rule

    system = orbit(e=0.5)
    integrator = host.integrators.create("leapfrog")
    for rule, option in (("freefall", "eta"), ("constant", "dt")):
        tuned = tune_rule(host, rule, system, integrator, orbits=1)
        assert tuned.option == option and tuned.label(rule).startswith(f"{rule} ({option}=")
        report = evaluate_predictor(system, integrator, tuned.predictor, orbits=1, label=rule)[0]
        assert report.pass_fraction == 1.0
        larger = host.predictors.create(rule, **{option: 1.25 * tuned.value})
        assert evaluate_predictor(system, integrator, larger, orbits=1, label=rule)[0].pass_fraction < 1.0


def test_evaluate_tuned_rule_reports_one_more_run_of_the_rule_it_tuned(host):
    system = orbit(e=0.7)
    leapfrog = host.integrators.create("leapfrog")
    tuned, report = evaluate_tuned_rule(host, "freefall", system, leapfrog, orbits=1)
    (again,) = evaluate_predictor(system, leapfrog, tuned.predictor, orbits=1)
    (looser,) = evaluate_predictor(system, leapfrog, host.predictors.create("freefall", eta=1.3 * tuned.value),
                                   orbits=1)
    assert (report.steps, report.pass_fraction) == (again.steps, 1.0) and looser.pass_fraction < 1.0
    assert tuned.option == "eta" and report.label == f"freefall (eta={tuned.value:.4g}, tuned)"
    constant, named = evaluate_tuned_rule(host, "constant", system, leapfrog, orbits=1, label="best constant")
    assert constant.option == "dt" and named.label == "best constant" and named.steps > report.steps


def test_tuning_stops_the_candidates_below_one_that_passed(host):
    """The smallest factors of the first grid take the most steps; once a larger one has passed, they cannot
    be the answer and stop, so a step cap between the answer's steps and theirs no longer ends the search."""
    system = orbit(e=0.7)
    leapfrog = host.integrators.create("leapfrog")
    unit = host.predictors.create("freefall", eta=1.0)
    eta = tune_scale(system, leapfrog, unit, orbits=1, rounds=2)
    (answer,) = evaluate_predictor(system, leapfrog, host.predictors.create("freefall", eta=eta), orbits=1)
    (smallest,) = evaluate_predictor(system, leapfrog, host.predictors.create("freefall", eta=1 / 64), orbits=1)
    cap = 2.5 * answer.steps  # the first grid's largest passing factor is one grid step (64^(1/7) = 1.8) below at most
    assert smallest.steps > cap
    assert tune_scale(system, leapfrog, unit, orbits=1, rounds=2, max_steps=int(cap)) == eta
