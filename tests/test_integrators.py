"""Default integrators: measured convergence order, conservation, reversibility, Kepler period, cost."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

import nbtoolkit.physics as physics
from nbtoolkit import angular_momentum, linear_momentum, state_energy

INTEGRATORS = ["leapfrog", "yoshida4", "rk4"]
EXPECTED_ORDER = {"leapfrog": 2, "yoshida4": 4, "rk4": 4}


def run(integrator, state, dt: float, steps: int):
    dts = torch.full((state.batch_size,), dt, dtype=state.dtype)
    for _ in range(steps):
        state = integrator.step(state, dts)
    return state


@pytest.mark.parametrize("name", INTEGRATORS)
def test_declares_order_and_cost(host, name):
    integ = host.integrators.create(name)
    assert integ.order == EXPECTED_ORDER[name]
    assert integ.force_evals_per_step == {"leapfrog": 1, "yoshida4": 3, "rk4": 4}[name]


@pytest.mark.parametrize("name", INTEGRATORS)
def test_measured_convergence_order_when_dt_halves(host, name):
    """Error at t = one period of an e = 0.5 orbit, against the exact return to the start."""
    integ = host.integrators.create(name)
    state, period = two_body_orbit(e=0.5)
    base = {"leapfrog": 400, "yoshida4": 100, "rk4": 200}[name]
    errors = []
    for steps in (base, 2 * base, 4 * base):
        end = run(integ, state, period / steps, steps)
        errors.append((end.position - state.position).norm().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    expected = EXPECTED_ORDER[name]
    assert all(abs(p - expected) < 0.3 for p in orders), (name, errors, orders)


@pytest.mark.parametrize("name", INTEGRATORS)
def test_kepler_orbit_returns_to_its_start_after_one_period(host, name):
    integ = host.integrators.create(name)
    state, period = two_body_orbit(e=0.3, a=2.0, m1=1.0, m2=0.5)
    steps = 2000 if name == "leapfrog" else 300
    end = run(integ, state, period / steps, steps)
    assert end.time.item() == pytest.approx(period, rel=1e-12)
    assert (end.position - state.position).norm().item() < 2e-3
    assert (end.velocity - state.velocity).norm().item() < 2e-3


@pytest.mark.parametrize("name", INTEGRATORS)
def test_linear_momentum_is_conserved_to_round_off(host, name):
    integ = host.integrators.create(name)
    state = random_cluster(3, 6, softening=0.1)
    p0 = linear_momentum(state.mass, state.velocity)
    end = run(integ, state, 0.01, 200)
    assert (linear_momentum(end.mass, end.velocity) - p0).abs().max().item() < 1e-12


@pytest.mark.parametrize("name", ["leapfrog", "yoshida4"])
def test_symplectic_schemes_conserve_angular_momentum_and_bound_energy_error(host, name):
    integ = host.integrators.create(name)
    state, period = two_body_orbit(e=0.7)
    L0, E0 = angular_momentum(state.mass, state.position, state.velocity), state_energy(state)
    steps = 4000
    dts = torch.full((1,), 10 * period / steps, dtype=torch.float64)
    errors = []
    for _ in range(steps):
        state = integ.step(state, dts)
        errors.append(((state_energy(state) - E0) / E0).abs().item())
    assert (angular_momentum(state.mass, state.position, state.velocity) - L0).abs().item() < 1e-12
    first_orbit, whole_run = max(errors[: steps // 10]), max(errors)
    assert whole_run < 0.01
    assert whole_run < 1.5 * first_orbit  # bounded oscillation: no secular drift over 10 orbits


def test_leapfrog_is_time_reversible_at_fixed_dt(host):
    integ = host.integrators.create("leapfrog")
    state, period = two_body_orbit(e=0.8)
    forward = run(integ, state, period / 500, 700)
    flipped = forward.replace(velocity=-forward.velocity)
    back = run(integ, flipped, period / 500, 700)
    assert (back.position - state.position).abs().max().item() < 1e-10
    assert (-back.velocity - state.velocity).abs().max().item() < 1e-10


@pytest.mark.parametrize("name", INTEGRATORS)
def test_each_system_uses_its_own_dt(host, name):
    integ = host.integrators.create(name)
    state = random_cluster(3, 4, softening=0.1)
    dt = torch.tensor([0.01, 0.03, 0.002], dtype=torch.float64)
    together = integ.step(state, dt)
    for b in range(3):
        alone = integ.step(state.index(b), dt[b : b + 1])
        assert torch.allclose(together.position[b], alone.position[0], rtol=1e-14, atol=1e-15)
        assert together.time[b].item() == pytest.approx(dt[b].item())


@pytest.mark.parametrize("name", INTEGRATORS)
def test_step_is_differentiable_in_dt_and_does_not_modify_its_input(host, name):
    integ = host.integrators.create(name)
    state = random_cluster(2, 3, softening=0.1)
    before = state.position.clone()
    dt = torch.tensor([0.01, 0.02], dtype=torch.float64, requires_grad=True)
    energy = state_energy(integ.step(state, dt)).sum()
    (grad,) = torch.autograd.grad(energy, dt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(state.position, before)


@pytest.mark.parametrize("name", INTEGRATORS)
def test_force_evaluations_per_step_match_the_declared_cost(host, name, monkeypatch):
    integ = host.integrators.create(name)
    calls = {"n": 0}
    real = physics.accelerations

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(physics, "accelerations", counting)
    state = integ.step(random_cluster(1, 4, softening=0.1), torch.tensor([0.01], dtype=torch.float64))
    calls["n"] = 0
    run(integ, state, 0.01, 10)
    assert calls["n"] == 10 * integ.force_evals_per_step
