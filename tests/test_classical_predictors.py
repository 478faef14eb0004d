"""Classical dt rules: values for known configurations and scale covariance."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import NBodyState
from nbtoolkit.errors import ConfigError, OptionError, PluginError


def scaled(state: NBodyState, L: float, M: float, G: float) -> NBodyState:
    """Lengths x L, masses x M, gravitational constant G: velocities scale by sqrt(G M / L) / sqrt(G0 M0 / L0)."""
    v_scale = math.sqrt(G * M / (state.G * L))
    return NBodyState.from_arrays(
        state.mass * M, state.position * L, state.velocity * v_scale, G=G, softening=state.softening * L
    )


@pytest.mark.parametrize("name", ["aarseth", "freefall"])
@pytest.mark.parametrize("L, M, G", [(3.7, 0.4, 1.0), (0.02, 50.0, 6.674e-3)])
def test_adaptive_rules_are_scale_covariant(host, name, L, M, G):
    predictor = host.predictors.create(name)
    state = random_cluster(4, 7, softening=0.0)
    dt0 = predictor(state)
    dt1 = predictor(scaled(state, L, M, G))
    assert dt0.shape == (4,) and (dt0 > 0).all()
    assert torch.allclose(dt1, dt0 * math.sqrt(L**3 / (G * M)), rtol=1e-12, atol=0)


def test_freefall_of_a_pair_is_eta_sqrt_r3_over_G_M(host):
    state = NBodyState.from_arrays([[1.0, 3.0], [2.0, 2.0]], [[[0, 0], [2, 0]], [[0, 0], [0, 0.5]]], torch.zeros(2, 2, 2), G=2.0)
    dt = host.predictors.create("freefall", eta=0.1)(state)
    expected = [0.1 * math.sqrt(8 / (2 * 4)), 0.1 * math.sqrt(0.125 / (2 * 4))]
    assert dt.tolist() == pytest.approx(expected, rel=1e-14)


def test_freefall_uses_the_closest_pair(host):
    state = NBodyState.from_arrays([1.0, 1.0, 1.0], [[0, 0], [10, 0], [10.5, 0]], [[0, 0]] * 3)
    assert host.predictors.create("freefall", eta=1.0)(state).item() == pytest.approx(math.sqrt(0.125 / 2))


def test_aarseth_on_a_circular_binary_matches_the_closed_form(host):
    d, m = 2.0, 1.5
    v = math.sqrt(2 * m / d) / 2  # each body's speed on a circular orbit of separation d
    state = NBodyState.from_arrays([m, m], [[-d / 2, 0], [d / 2, 0]], [[0, -v], [0, v]])
    # |a| = m/d^2, |jerk| = m u/d^3 with u = 2v, nearest = d  =>  tau = d^1.5 / sqrt(3 m)
    dt = host.predictors.create("aarseth", eta=0.03)(state)
    assert dt.item() == pytest.approx(0.03 * d**1.5 / math.sqrt(3 * m), rel=1e-13)


def test_aarseth_is_finite_for_bodies_at_rest(host):
    state = NBodyState.from_arrays([3.0, 4.0, 5.0], [[1, 3], [-2, -1], [1, -1]], [[0, 0]] * 3)
    dt = host.predictors.create("aarseth")(state)
    assert torch.isfinite(dt).all() and dt.item() > 0


def test_constant_returns_its_dt_and_rejects_bad_values(host):
    state = random_cluster(3, 2)
    assert host.predictors.create("constant", dt=0.125)(state).tolist() == [0.125] * 3
    with pytest.raises(PluginError, match="option 'dt' of dt predictor 'constant' .* must be finite and > 0; got -1.0"):
        host.predictors.create("constant", dt=-1.0)
    with pytest.raises(ConfigError, match="option 'eta' of FreeFallDt must be finite and > 0; got nan"):
        host.predictors.get("freefall").factory(eta=float("nan"))  # built directly: the declaration still checks
    with pytest.raises(PluginError, match="does not take option"):
        host.predictors.create("constant", eta=0.1)


@pytest.mark.parametrize("name, option", [("constant", "dt"), ("aarseth", "eta"), ("freefall", "eta")])
@pytest.mark.parametrize("value, refusal", [(-1, "must be finite and > 0; got -1.0"), (0.0, "must be finite and > 0"),
                                            (math.inf, "must be finite and > 0"), ("abc", "must be a number; got 'abc'"),
                                            (True, "must be a number; got True")])
def test_the_declared_option_refuses_bad_values_naming_the_rule_and_its_option(host, name, option, value, refusal):
    with pytest.raises(OptionError, match=f"option '{option}' of dt predictor '{name}' "
                                          rf"\(plugin 'plugins.classical_predictors'\) {refusal}"):
        host.predictors.create(name, **{option: value})


def test_the_declared_option_is_normalised_to_a_float(host):
    rule = host.predictors.create("freefall", eta=1)
    assert rule.eta == 1.0 and isinstance(rule.eta, float)
    [declared] = host.predictors.get("aarseth").options()
    assert (declared.name, declared.type, declared.default) == ("eta", float, 0.02)


def test_aarseth_is_positive_at_the_figure_eight_start_where_one_body_feels_no_force(host):
    """The middle body of the figure-eight starts with a = 0 (its two pulls cancel) but a non-zero jerk."""
    from nbtoolkit.physics import state_accelerations
    from nbtoolkit.presets import make_preset

    state = make_preset("figure-eight").state
    assert float(state_accelerations(state)[0, 2].norm()) < 1e-12
    dt = host.predictors.create("aarseth", eta=0.02)(state)
    freefall = host.predictors.create("freefall", eta=0.02)(state)
    assert bool((dt > 0).all()) and bool(torch.isfinite(dt).all())
    assert 0.05 < float(dt / freefall) < 20  # a timescale of the orbit, not a degenerate one


def test_aarseth_and_freefall_ignore_padding_bodies(host):
    from nbtoolkit.families import SystemDraw
    from nbtoolkit.training.trainset import pad_systems

    state, _ = two_body_orbit(e=0.3)
    x3 = torch.cat([state.position[0], torch.zeros(2, 1, dtype=torch.float64)], -1)
    v3 = torch.cat([state.velocity[0], torch.zeros(2, 1, dtype=torch.float64)], -1)
    tri = SystemDraw("test", torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
                     torch.tensor([[5.0, 0, 0], [-5.0, 0, 0], [0, 5.0, 0]], dtype=torch.float64),
                     torch.zeros(3, 3, dtype=torch.float64))
    padded = pad_systems([SystemDraw("test", state.mass[0], x3, v3), tri])
    alone = NBodyState.from_arrays(state.mass, x3.unsqueeze(0), v3.unsqueeze(0))
    for name in ("aarseth", "freefall"):
        rule = host.predictors.create(name, eta=0.05)
        assert torch.allclose(rule(padded)[:1], rule(alone), rtol=1e-12), name
