"""The learned ``mlp`` dt predictor: scale-free, permutation/rotation invariant, positive, trainable."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import NBodyState
from nbtoolkit.errors import ConfigError, PluginError
from nbtoolkit.predictor import History
from plugins.mlp_predictor import (
    MAX_ENERGY_SHARE,
    TIMESCALES,
    MLPDtPredictor,
    closest_pair_scales,
    pair_features,
    pair_scales,
)


def make(host, **options):
    options.setdefault("hidden_width", 8)
    options.setdefault("seed", 0)
    return host.predictors.create("mlp", **options)


def test_registered_and_outputs_positive_dt_of_shape_b(host):
    pred = make(host)
    assert isinstance(pred, MLPDtPredictor) and pred.trainable
    state = random_cluster(5, 4)
    dt = pred(state)
    assert dt.shape == (5,) and dt.dtype == torch.float64
    assert bool((dt > 0).all()) and bool(torch.isfinite(dt).all())


def test_untrained_dt_is_init_factor_times_closest_pair_free_fall_time(host):
    state = random_cluster(3, 5)
    pred = make(host, init_factor=0.03)
    tau, _ = closest_pair_scales(state.mass, state.position, state.G, state.softening)
    ratio = pred(state) / tau
    assert torch.allclose(ratio, torch.full_like(ratio, 0.03), rtol=0.05)


@pytest.mark.parametrize("history_len, timescale", [(0, "freefall"), (2, "freefall"), (2, "crossing")])
def test_rescaling_units_rescales_dt_by_dynamical_time(host, history_len, timescale):
    """Lengths x L, masses x M, velocities x sqrt(G M / L): dt scales by sqrt(L^3 / (G M)) to round-off."""
    pred = make(host, history_len=history_len, fourier_features=4, hidden_layers=2, timescale=timescale)
    state = random_cluster(4, 6, softening=0.05)
    L, M = 37.0, 0.004
    scaled = NBodyState.from_arrays(state.mass * M, state.position * L, state.velocity * math.sqrt(M / L),
                                    softening=state.softening * L)
    history = scaled_history = None
    if history_len:
        history = History.empty(state, history_len).push(state.replace(position=state.position * 1.1))
        scaled_history = History(history.position * L, history.velocity * math.sqrt(M / L), history.mask)
    dt, dt_scaled = pred(state, history), pred(scaled, scaled_history)
    assert torch.allclose(dt_scaled, dt * math.sqrt(L**3 / M), rtol=1e-10)


def test_changing_G_rescales_dt(host):
    pred = make(host)
    state = random_cluster(2, 3)
    heavy_g = state.replace(G=4.0, velocity=state.velocity * 2.0)  # same orbits, time runs twice as fast
    assert torch.allclose(pred(heavy_g), pred(state) / 2.0, rtol=1e-10)


@pytest.mark.parametrize("timescale", ["freefall", "crossing"])
def test_invariant_under_relabelling_rotation_and_translation(host, timescale):
    pred = make(host, fourier_features=3, timescale=timescale)
    state = random_cluster(3, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = NBodyState.from_arrays(state.mass[:, perm], state.position[:, perm], state.velocity[:, perm])
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    # translations and rotations; not Galilean boosts, which change |E| and so the gate |dE/E| itself
    moved = NBodyState.from_arrays(state.mass, state.position @ q.T + 5.0, state.velocity @ q.T)
    dt = pred(state)
    assert torch.allclose(pred(permuted), dt, rtol=1e-12)
    assert torch.allclose(pred(moved), dt, rtol=1e-10)


def test_pair_features_of_a_kepler_orbit_are_its_invariants():
    state, _ = two_body_orbit(e=0.6)  # starts at pericentre
    feats, _, mask, tau_min, r_min, closest_e, closest_share, closest_tide = pair_features(state)
    assert feats.shape == (1, 1, 8) and bool(mask.all()) and float(closest_tide[0]) < 1e-14  # nothing else pulls
    assert math.isclose(float(closest_e[0]), 0.6, rel_tol=1e-12)
    assert math.isclose(float(closest_share[0]), 2 / (1 - 0.6), rel_tol=1e-12)  # G m1 m2 / (r |E|) = 2a / r
    r = 1 - 0.6
    assert torch.allclose(r_min, torch.tensor([r], dtype=torch.float64))
    assert torch.allclose(tau_min, torch.tensor([math.sqrt(r**3 / 2.0)], dtype=torch.float64))
    f = feats[0, 0]
    assert math.isclose(float(f[2]), math.log1p(2 - r), rel_tol=1e-12)  # v^2 r / GM = 2 - r / a
    assert abs(float(f[3])) < 1e-12  # no radial velocity at pericentre
    assert math.isclose(float(f[4]), math.log1p(0.6), rel_tol=1e-12)  # eccentricity
    assert math.isclose(float(f[5]), 1.0)  # the pair holds all the mass
    assert math.isclose(float(f[6]), math.log1p(2 / r), rel_tol=1e-12)  # G m1 m2 / (r |E|) = 2a / r
    assert abs(float(f[7])) < 1e-12  # an isolated pair feels no tidal perturbation


def test_history_changes_the_prediction_and_missing_history_is_zero_padding(host):
    pred = make(host, history_len=3)
    state = random_cluster(2, 4)
    empty = History.empty(state, 3)
    assert torch.equal(pred(state, None), pred(state, empty))
    full = empty.push(state.replace(position=state.position * 0.5)).push(state.replace(position=state.position * 0.8))
    # a real past state enters the features, so the output moves
    with torch.no_grad():
        for p in pred.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2)))
    assert not torch.allclose(pred(state, empty), pred(state, full))
    with pytest.raises(ConfigError, match="history_len"):
        pred(state, History.empty(state, 2))


def test_gradient_reaches_every_parameter_through_dt(host):
    pred = make(host, history_len=1, fourier_features=2)
    state = random_cluster(3, 4)
    pred(state, History.empty(state, 1).push(state)).log().sum().backward()
    for name, p in pred.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(pred.head[-1].weight.grad.abs().sum()) > 0


def test_output_stays_positive_for_extreme_weights(host):
    pred = make(host)
    with torch.no_grad():
        pred.head[-1].bias.fill_(1e6)
    dt_hi = pred(random_cluster(2, 3))
    with torch.no_grad():
        pred.head[-1].bias.fill_(-1e6)
    dt_lo = pred(random_cluster(2, 3))
    assert bool((dt_lo > 0).all()) and bool(torch.isfinite(dt_hi).all()) and bool((dt_hi > dt_lo).all())


def test_same_seed_same_weights_and_architecture_options(host):
    a, b = make(host, seed=5), make(host, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    wide = make(host, hidden_width=16, hidden_layers=3, activation="silu", fourier_features=5)
    linears = [m for m in wide.pair_net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and linears[0].in_features == 8 + 2 * 5 and linears[0].out_features == 16
    assert any(isinstance(m, torch.nn.SiLU) for m in wide.modules())


@pytest.mark.parametrize("options, key", [
    ({"hidden_width": 0}, "hidden_width"),
    ({"activation": "sigmoid"}, "activation"),
    ({"init_factor": -1.0}, "init_factor"),
    ({"history_len": -2}, "history_len"),
    ({"timescale": "orbital"}, "timescale"),
])
def test_bad_options_name_the_option(host, options, key):
    with pytest.raises(PluginError, match=key):
        make(host, **options)


def test_single_body_is_rejected(host):
    state = NBodyState.from_arrays([[1.0]], [[[0.0, 0.0]]], [[[0.0, 0.0]]])
    with pytest.raises(ConfigError, match="two bodies"):
        make(host)(state)


def test_only_the_closest_pairs_enter_the_network_and_stay_permutation_invariant(host):
    state = random_cluster(3, 8)  # 28 pairs
    feats = pair_features(state, max_pairs=6).features
    assert feats.shape == (3, 6, 8)
    assert torch.allclose(feats[..., 0].amin(-1), torch.zeros(3, dtype=torch.float64))  # the closest pair is in
    all_feats = pair_features(state).features
    kept = torch.sort(feats[..., 0], dim=-1).values
    assert torch.allclose(kept, torch.sort(all_feats[..., 0], dim=-1).values[:, :6])
    pred = make(host, max_pairs=6)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    permuted = NBodyState.from_arrays(state.mass[:, perm], state.position[:, perm], state.velocity[:, perm])
    assert torch.allclose(pred(permuted), pred(state), rtol=1e-12)


@pytest.mark.parametrize("timescale", TIMESCALES)
def test_each_chosen_pair_gets_the_inputs_it_has_among_all_pairs(timescale):
    """Relative velocities are computed for the chosen pairs alone (the free-fall timescale needs none): every
    input of a chosen pair, the velocity terms among them, is what the same pair gets when every pair enters."""
    state = random_cluster(3, 8)  # 28 pairs, distinct timescales
    some, every = pair_features(state, max_pairs=6, timescale=timescale), pair_features(state, timescale=timescale)
    rows = [torch.gather(f.features, 1, f.log_tau.argsort(-1)[:, :6, None].expand(-1, -1, 8)) for f in (some, every)]
    assert torch.equal(rows[0], rows[1])
    assert torch.equal(some.closest_eccentricity, every.closest_eccentricity)


def test_a_binarys_dt_does_not_depend_on_its_mass_ratio(host):
    """Leapfrog moves the relative orbit of two bodies the same way whatever their mass ratio, and |dE/E| is
    that of the relative orbit: the inputs carry no mass ratio, so the dt of a binary depends on its orbit only."""
    pred = make(host)
    dts = []
    for m2 in (1.0, 0.3, 1e-3):
        state, _ = two_body_orbit(e=0.7, m1=2.0 - m2, m2=m2)
        dts.append(pred(state))
    assert torch.allclose(dts[1], dts[0], rtol=1e-12) and torch.allclose(dts[2], dts[0], rtol=1e-12)


def test_crossing_timescale_is_the_free_fall_time_at_rest_and_r_over_v_when_fast():
    mass = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    position = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)  # r = 2, mu = 4
    at_rest = torch.zeros_like(position)
    fast = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1e4, 0.0]]], dtype=torch.float64)  # 10^4 x the escape speed 2
    _, _, free_fall = pair_scales(mass, position, 1.0, 0.0)
    _, _, resting = pair_scales(mass, position, 1.0, 0.0, at_rest)
    _, _, crossing = pair_scales(mass, position, 1.0, 0.0, fast)
    assert math.isclose(float(free_fall), math.sqrt(8 / 4), rel_tol=1e-15)
    assert math.isclose(float(resting), float(free_fall), rel_tol=1e-15)
    assert math.isclose(float(crossing), 2 / 1e4, rel_tol=1e-7)


def test_untrained_crossing_dt_follows_a_fast_flyby(host):
    """A pair passing at 100 x its escape speed gets init_factor x its crossing time r / v, far below
    its free-fall time; with ``freefall`` the untrained dt ignores the speed."""
    mass = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    position = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    velocity = torch.tensor([[[0.0, -100.0, 0.0], [0.0, 100.0, 0.0]]], dtype=torch.float64)  # v = 200, v_esc = 2
    state = NBodyState.from_arrays(mass, position, velocity)
    with torch.no_grad():
        crossing = make(host, init_factor=0.03, timescale="crossing")(state)
        free_fall = make(host, init_factor=0.03)(state)
    assert math.isclose(float(crossing), 0.03 / 200, rel_tol=0.05)
    assert math.isclose(float(free_fall), 0.03 * math.sqrt(0.5), rel_tol=0.05)


def test_a_system_of_zero_total_energy_has_finite_inputs_and_dt(host):
    """Two unit masses 1 apart, each moving at 1 from their centre: E = 1 - 1 = 0 exactly."""
    state = NBodyState.from_arrays([[1.0, 1.0]], [[[-0.5, 0.0], [0.5, 0.0]]], [[[0.0, -1.0], [0.0, 1.0]]])
    feats = pair_features(state).features
    assert bool(torch.isfinite(feats).all())
    assert math.isclose(float(feats[0, 0, 6]), math.log1p(MAX_ENERGY_SHARE), rel_tol=1e-12)
    dt = make(host)(state).detach()
    assert bool(torch.isfinite(dt).all()) and float(dt) > 0


def test_a_time_symmetric_dt_is_the_same_with_every_velocity_reversed(host):
    """The shipped network tells a pair falling in from one flying out (its radial-velocity input); with
    ``time_symmetric`` it proposes the smaller of the two dt for both, the network otherwise unchanged."""
    shipped = host.predictors.create("learned", feedback=False)
    symmetric = host.predictors.create("mlp", **dict(shipped.options, time_symmetric=True))
    symmetric.load_state_dict(shipped.state_dict())
    from nbtoolkit.presets import make_preset

    kepler = make_preset("kepler", eccentricity=0.9).state
    off_apsis = kepler.replace(position=kepler.position + 0.3 * kepler.velocity)  # falling in, not at an apsis
    for state in (off_apsis, random_cluster(5, 4, seed=3), random_cluster(3, 20, seed=4)):
        flipped = state.replace(velocity=-state.velocity)
        forward, backward = shipped(state), shipped(flipped)
        assert not torch.allclose(forward, backward, rtol=1e-3)  # the plain network is not even in time
        assert torch.allclose(symmetric(state), symmetric(flipped), rtol=1e-14, atol=0)
        assert torch.allclose(symmetric(state), torch.minimum(forward, backward), rtol=1e-12, atol=0)


def test_a_time_symmetric_dt_cannot_read_a_history(host):
    with pytest.raises(PluginError, match="time_symmetric.*history_len"):
        make(host, time_symmetric=True, history_len=2)
