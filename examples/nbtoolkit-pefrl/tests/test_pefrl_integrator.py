"""The ``pefrl`` integrator: discovery through the entry point, measured order, cost, symmetries."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("nbtoolkit_pefrl", reason="nbtoolkit-pefrl is not installed (pip install ./examples/nbtoolkit-pefrl)")

import nbtoolkit_pefrl.integrator as pefrl_module  # noqa: E402
from nbtoolkit_pefrl import PEFRL  # noqa: E402

from nbtoolkit import NBodyState, PluginHost, angular_momentum, linear_momentum, state_energy  # noqa: E402


def two_body_orbit(e: float, a: float = 1.0, m1: float = 1.0, m2: float = 1.0) -> tuple[NBodyState, float]:
    """A bound two-body orbit (G = 1) starting at pericentre in the centre-of-mass frame, and its period."""
    M = m1 + m2
    r, v = a * (1 - e), math.sqrt(M * (1 + e) / (a * (1 - e)))
    rel_x, rel_v = torch.tensor([r, 0.0], dtype=torch.float64), torch.tensor([0.0, v], dtype=torch.float64)
    pos = torch.stack([-m2 / M * rel_x, m1 / M * rel_x])
    vel = torch.stack([-m2 / M * rel_v, m1 / M * rel_v])
    return NBodyState.from_arrays([m1, m2], pos, vel), 2 * math.pi * math.sqrt(a**3 / M)


def cluster(batch: int, n: int, seed: int = 0) -> NBodyState:
    g = torch.Generator().manual_seed(seed)
    mass = 0.5 + torch.rand(batch, n, generator=g, dtype=torch.float64)
    pos = torch.randn(batch, n, 3, generator=g, dtype=torch.float64)
    vel = 0.3 * torch.randn(batch, n, 3, generator=g, dtype=torch.float64)
    return NBodyState.from_arrays(mass, pos, vel, softening=0.1)


def run(integrator, state: NBodyState, dt: float, steps: int) -> NBodyState:
    dts = torch.full((state.batch_size,), dt, dtype=state.dtype)
    for _ in range(steps):
        state = integrator.step(state, dts)
    return state


def test_the_entry_point_registers_pefrl_from_this_distribution():
    host = PluginHost()
    entry = host.integrators.get("pefrl")
    assert entry.factory is PEFRL and entry.plugin == "pefrl" and entry.source == "nbtoolkit-pefrl 0.1.0"
    integ = host.integrators.create("pefrl")
    assert (integ.order, integ.force_evals_per_step, integ.symplectic) == (4, 4, True)


def test_coefficients_are_consistent():
    assert sum(pefrl_module.DRIFTS) == pytest.approx(1.0, abs=1e-15)
    assert sum(pefrl_module.KICKS) == pytest.approx(1.0, abs=1e-15)


def test_measured_convergence_order_is_four_when_dt_halves():
    """Position error after one period of an e = 0.5 orbit against the exact return to the start."""
    state, period = two_body_orbit(e=0.5)
    errors = [(run(PEFRL(), state, period / n, n).position - state.position).norm().item() for n in (50, 100, 200)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(p - 4) < 0.1 for p in orders), (errors, orders)


def test_energy_error_amplitude_scales_as_dt_to_the_fourth():
    state, period = two_body_orbit(e=0.5)
    e0 = state_energy(state)
    amplitudes = []
    for n in (100, 200):
        s, worst = state, 0.0
        dt = torch.full((1,), period / n, dtype=torch.float64)
        for _ in range(n):
            s = PEFRL().step(s, dt)
            worst = max(worst, ((state_energy(s) - e0) / e0).abs().item())
        amplitudes.append(worst)
    assert math.log2(amplitudes[0] / amplitudes[1]) == pytest.approx(4, abs=0.1)


def test_more_accurate_than_yoshida4_at_equal_force_evaluations():
    """Omelyan et al.'s point: a far smaller error constant. 300 force evaluations per orbit each."""
    host = PluginHost(("plugins.integrators",), load_entry_points=False)
    state, period = two_body_orbit(e=0.5)
    pefrl_error = (run(PEFRL(), state, period / 75, 75).position - state.position).norm().item()
    yoshida_error = (run(host.integrators.create("yoshida4"), state, period / 100, 100).position - state.position).norm().item()
    assert pefrl_error < yoshida_error / 4, (pefrl_error, yoshida_error)


def test_force_evaluations_per_step_match_the_declared_cost(monkeypatch):
    calls = {"n": 0}
    real = pefrl_module.accelerations

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pefrl_module, "accelerations", counting)
    run(PEFRL(), cluster(2, 5), 0.01, 10)
    assert calls["n"] == 10 * PEFRL.force_evals_per_step


def test_time_reversible_at_fixed_dt():
    state, period = two_body_orbit(e=0.8)
    forward = run(PEFRL(), state, period / 300, 450)
    back = run(PEFRL(), forward.replace(velocity=-forward.velocity), period / 300, 450)
    assert (back.position - state.position).abs().max().item() < 1e-10
    assert (-back.velocity - state.velocity).abs().max().item() < 1e-10


def test_symplectic_bounded_energy_error_and_conserved_momenta():
    state, period = two_body_orbit(e=0.7, m2=0.3)
    e0 = state_energy(state)
    L0 = angular_momentum(state.mass, state.position, state.velocity)
    P0 = linear_momentum(state.mass, state.velocity)
    steps = 2000
    dt = torch.full((1,), 10 * period / steps, dtype=torch.float64)
    errors = []
    for _ in range(steps):
        state = PEFRL().step(state, dt)
        errors.append(((state_energy(state) - e0) / e0).abs().item())
    assert max(errors) < 1e-3
    assert max(errors) < 1.5 * max(errors[: steps // 10])  # no secular drift over ten orbits
    assert (angular_momentum(state.mass, state.position, state.velocity) - L0).abs().item() < 1e-12
    assert (linear_momentum(state.mass, state.velocity) - P0).abs().max().item() < 1e-13
    assert state.time.item() == pytest.approx(10 * period, rel=1e-12)


def test_each_system_uses_its_own_dt():
    state = cluster(3, 4)
    dt = torch.tensor([0.01, 0.03, 0.002], dtype=torch.float64)
    together = PEFRL().step(state, dt)
    assert torch.equal(together.time, state.time + dt)
    for b in range(3):
        alone = PEFRL().step(state.index(b), dt[b : b + 1])
        assert torch.allclose(together.position[b], alone.position[0], rtol=1e-14, atol=1e-15)
        assert torch.allclose(together.velocity[b], alone.velocity[0], rtol=1e-14, atol=1e-15)


def test_differentiable_in_dt_without_modifying_its_input():
    state = cluster(2, 3).replace(acceleration=torch.zeros(2, 3, 3, dtype=torch.float64))
    before = state.position.clone()
    dt = torch.tensor([0.01, 0.02], dtype=torch.float64, requires_grad=True)
    out = PEFRL().step(state, dt)
    assert out.acceleration is None  # the step ends with a drift: nothing to cache
    (grad,) = torch.autograd.grad(state_energy(out).sum(), dt)
    assert torch.isfinite(grad).all() and (grad != 0).all()
    assert torch.equal(state.position, before)
