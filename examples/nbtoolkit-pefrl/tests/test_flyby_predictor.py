"""The ``flyby`` dt rule: closed forms, scale covariance, invariances, finiteness at rest."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nbtoolkit_pefrl", reason="nbtoolkit-pefrl is not installed (pip install ./examples/nbtoolkit-pefrl)")

from nbtoolkit_pefrl import FlybyDt  # noqa: E402

from nbtoolkit import NBodyState, PluginHost  # noqa: E402
from nbtoolkit.errors import ConfigError, InvalidStateError, PluginError  # noqa: E402


def cluster(batch: int, n: int, seed: int = 0, softening: float = 0.0) -> NBodyState:
    g = torch.Generator().manual_seed(seed)
    mass = 0.5 + torch.rand(batch, n, generator=g, dtype=torch.float64)
    pos = torch.randn(batch, n, 3, generator=g, dtype=torch.float64)
    vel = 0.3 * torch.randn(batch, n, 3, generator=g, dtype=torch.float64)
    return NBodyState.from_arrays(mass, pos, vel, softening=softening)


def scaled(state: NBodyState, L: float, M: float, G: float) -> NBodyState:
    """Lengths x L, masses x M, gravitational constant G (velocities x sqrt(G M / (G0 L)))."""
    v_scale = math.sqrt(G * M / (state.G * L))
    return NBodyState.from_arrays(state.mass * M, state.position * L, state.velocity * v_scale, G=G,
                                  softening=state.softening * L)


def test_registered_with_its_eta_option():
    host = PluginHost()
    entry = host.predictors.get("flyby")
    assert entry.source == "nbtoolkit-pefrl 0.1.0" and entry.accepted_options() == {"eta"}
    assert host.predictors.create("flyby", eta=0.2).eta == 0.2
    assert [(o.name, o.default) for o in entry.options()] == [("eta", 0.05)]  # declared: checked, listed in help
    with pytest.raises(PluginError, match="option 'eta' of dt predictor 'flyby' .*must be finite and > 0"):
        host.predictors.create("flyby", eta=-1.0)


@pytest.mark.parametrize("L, M, G", [(3.7, 0.4, 1.0), (0.02, 50.0, 6.674e-3), (1e5, 1e-3, 2.0)])
@pytest.mark.parametrize("softening", [0.0, 0.05])
def test_scale_covariant(L, M, G, softening):
    state = cluster(4, 6, softening=softening)
    dt0, dt1 = FlybyDt()(state), FlybyDt()(scaled(state, L, M, G))
    assert dt0.shape == (4,) and (dt0 > 0).all()
    assert torch.allclose(dt1, dt0 * math.sqrt(L**3 / (G * M)), rtol=1e-12, atol=0)


def test_galilean_invariant_and_symmetric_under_velocity_reversal():
    state = cluster(3, 5)
    boost = torch.tensor([0.7, -2.0, 5.0], dtype=torch.float64)
    dt = FlybyDt()(state)
    assert torch.allclose(FlybyDt()(state.replace(velocity=state.velocity + boost)), dt, rtol=1e-12, atol=0)
    assert torch.equal(FlybyDt()(state.replace(velocity=-state.velocity)), dt)


def test_a_pair_at_rest_gets_eta_times_its_free_fall_time():
    state = NBodyState.from_arrays([[1.0, 3.0]], [[[0.0, 0.0], [2.0, 0.0]]], torch.zeros(1, 2, 2), G=2.0)
    dt = FlybyDt(eta=0.1)(state)
    assert torch.isfinite(dt).all()
    assert dt.item() == pytest.approx(0.1 * math.sqrt(2.0**3 / (2.0 * 4.0)), rel=1e-14)


def test_a_moving_pair_combines_fly_by_and_free_fall_times():
    r, u, G, msum = 2.0, 3.0, 1.0, 2.0
    state = NBodyState.from_arrays([1.0, 1.0], [[0.0, 0.0], [r, 0.0]], [[0.0, 0.0], [0.0, u]], G=G)
    expected = 0.05 / math.sqrt(u**2 / r**2 + G * msum / r**3)
    assert FlybyDt()(state).item() == pytest.approx(expected, rel=1e-14)
    # a fast fly-by is limited by r/u, far below the free-fall time
    fast = state.replace(velocity=state.velocity * 1e3)
    assert FlybyDt(eta=1.0)(fast).item() == pytest.approx(r / (u * 1e3), rel=1e-6)


def test_the_shortest_pair_time_wins_and_softening_enters_the_distance():
    state = NBodyState.from_arrays([1.0, 1.0, 1.0], [[0.0, 0.0], [10.0, 0.0], [10.5, 0.0]], torch.zeros(3, 2))
    assert FlybyDt(eta=1.0)(state).item() == pytest.approx(math.sqrt(0.5**3 / 2), rel=1e-14)
    soft = NBodyState.from_arrays([1.0, 1.0, 1.0], [[0.0, 0.0], [10.0, 0.0], [10.5, 0.0]], torch.zeros(3, 2),
                                  softening=0.5)
    assert FlybyDt(eta=1.0)(soft).item() == pytest.approx(math.sqrt(0.5**1.5 / 2), rel=1e-14)


def test_batched_prediction_equals_one_system_at_a_time():
    state = cluster(5, 4, seed=3)
    together = FlybyDt()(state)
    alone = torch.cat([FlybyDt()(state.index(b)) for b in range(5)])
    assert torch.allclose(together, alone, rtol=1e-15, atol=0)


def test_differentiable_even_for_bodies_at_rest():
    pos = torch.tensor([[[1.0, 3.0], [-2.0, -1.0], [1.0, -1.0]]], dtype=torch.float64, requires_grad=True)
    state = NBodyState(torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64), pos,
                       torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True), torch.zeros(1, dtype=torch.float64))
    (g_pos, g_vel) = torch.autograd.grad(FlybyDt()(state).sum(), (pos, state.velocity))
    assert torch.isfinite(g_pos).all() and g_pos.abs().sum() > 0
    assert torch.equal(g_vel, torch.zeros_like(g_vel))  # u^2 has a zero gradient at u = 0


def test_bad_eta_and_a_single_body_are_clear_errors():
    with pytest.raises(ConfigError, match="option 'eta' of FlybyDt must be finite and > 0; got 0.0"):
        FlybyDt(eta=0.0)
    one = NBodyState.from_arrays([1.0], [[0.0, 0.0]], [[1.0, 0.0]])
    with pytest.raises(InvalidStateError, match="at least two bodies"):
        FlybyDt()(one)
