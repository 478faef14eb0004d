"""Leapfrog's modified Hamiltonian (nbtoolkit/shadow.py) and the step error it predicts: the shadow term is
what leapfrog conserves, its rate is its time derivative, and the coefficient predicts one step's |dE/E|."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit.physics import relative_energy_error, state_accelerations, state_energy
from nbtoolkit.presets import make_preset
from nbtoolkit.shadow import flow_derivatives, kdk_error_coefficient, kdk_error_coefficients, shadow_term
from nbtoolkit.state import NBodyState
from plugins.fields import PointMassHost


def fixed_step_energies(state: NBodyState, leapfrog, h: float, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E and H2, each (steps, B), along ``steps`` leapfrog steps of ``h``."""
    energies, terms = [], []
    dt = torch.full((state.batch_size,), h, dtype=state.dtype)
    for _ in range(steps):
        energies.append(state_energy(state))
        terms.append(shadow_term(state))
        state = leapfrog.step(state, dt)
    return torch.stack(energies), torch.stack(terms)


@pytest.mark.parametrize("name", ["kepler e=0.6", "figure-eight", "softened cluster"])
def test_leapfrog_conserves_its_modified_hamiltonian(host, name):
    """H + h^2 H2 varies far less than H along a fixed-step leapfrog run: H2 is leapfrog's h^2 term."""
    leapfrog = host.integrators.create("leapfrog")
    if name == "kepler e=0.6":
        state, period = two_body_orbit(e=0.6)
        h, steps = period / 300, 600
    elif name == "figure-eight":
        state, h, steps = make_preset("figure-eight").state, 0.02, 400
    else:
        state, h, steps = random_cluster(batch=2, n=5, softening=0.5, seed=3), 0.01, 300
    energy, term = fixed_step_energies(state, leapfrog, h, steps)
    shadow = energy + h * h * term
    assert bool((shadow.std(0) < energy.std(0) / 100).all()), (shadow.std(0), energy.std(0))
    wrong_sign = energy - h * h * term  # the term with the opposite sign does not cancel the oscillation
    assert bool((wrong_sign.std(0) > energy.std(0)).all())


@pytest.mark.parametrize("dim,softening", [(3, 0.0), (2, 0.2)])
def test_shadow_rate_is_the_time_derivative_of_the_shadow_term(host, dim, softening):
    leapfrog = host.integrators.create("leapfrog")
    state = random_cluster(batch=3, n=6, dim=dim, softening=softening, seed=1)
    h = 1e-5
    forward = leapfrog.step(state, torch.full((3,), h, dtype=torch.float64))
    backward = leapfrog.step(state, torch.full((3,), -h, dtype=torch.float64))
    numeric = (shadow_term(forward) - shadow_term(backward)) / (2 * h)
    rate = flow_derivatives(state, state.position, state.velocity)[2]
    torch.testing.assert_close(rate, numeric, rtol=1e-6, atol=0.0)


def test_acceleration_and_jerk_are_the_force_kernels_and_its_time_derivative(host):
    leapfrog = host.integrators.create("leapfrog")
    state = random_cluster(batch=2, n=4, softening=0.1, seed=5)
    acceleration, jerk, _ = flow_derivatives(state, state.position, state.velocity)
    torch.testing.assert_close(acceleration, state_accelerations(state), rtol=1e-12, atol=1e-14)
    h = 1e-6
    forward = leapfrog.step(state, torch.full((2,), h, dtype=torch.float64))
    backward = leapfrog.step(state, torch.full((2,), -h, dtype=torch.float64))
    numeric = (state_accelerations(forward) - state_accelerations(backward)) / (2 * h)
    torch.testing.assert_close(jerk, numeric, rtol=1e-6, atol=1e-9)


def test_error_coefficient_predicts_one_steps_energy_error(host):
    """For steps of an 800th to a 100th of the period of a Kepler orbit, C dt^3 is the step's |dE/E| within 5 %, at
    a generic phase and at pericentre, where dH2/dt is 0 at the start and grows linearly through the step."""
    leapfrog = host.integrators.create("leapfrog")
    pericentre, period = two_body_orbit(e=0.5)
    state = pericentre
    for _ in range(37):
        state = leapfrog.step(state, torch.full((1,), period / 400, dtype=torch.float64))
    start_rate = flow_derivatives(pericentre, pericentre.position, pericentre.velocity)[2]
    assert abs(float(start_rate)) < 1e-12
    for start in (state, pericentre):
        for fraction in (1 / 800, 1 / 200, 1 / 100):
            dt = torch.full((1,), period * fraction, dtype=torch.float64)
            actual = relative_energy_error(state_energy(start), state_energy(leapfrog.step(start, dt)))
            predicted = leapfrog.energy_error_coefficient(start, dt) * dt**3
            assert float(actual / predicted) == pytest.approx(1.0, rel=0.05), fraction


def test_padding_bodies_change_nothing(host):
    state = random_cluster(batch=1, n=3, seed=2)
    far = torch.tensor([[[1e6, 0.0, 0.0], [0.0, 2e6, 0.0]]], dtype=torch.float64)
    padded = NBodyState.from_dict({"mass": torch.cat([state.mass, torch.zeros(1, 2, dtype=torch.float64)], -1),
                                   "position": torch.cat([state.position, far], -2),
                                   "velocity": torch.cat([state.velocity, torch.zeros_like(far)], -2)},
                                  allow_padding=True)
    dt = torch.full((1,), 0.01, dtype=torch.float64)
    torch.testing.assert_close(kdk_error_coefficient(padded, dt), kdk_error_coefficient(state, dt), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(shadow_term(padded), shadow_term(state), rtol=1e-12, atol=0.0)


def test_only_leapfrog_without_a_field_estimates_its_error(host):
    state, _ = two_body_orbit(e=0.3)
    dt = torch.full((1,), 0.01, dtype=torch.float64)
    assert host.integrators.create("leapfrog").energy_error_coefficient(state, dt) is not None
    for name in ("yoshida4", "rk4"):
        assert host.integrators.create(name).energy_error_coefficient(state, dt) is None
    in_field = state.replace(field=PointMassHost(mass=800.0, distance=30.0))
    assert host.integrators.create("leapfrog").energy_error_coefficient(in_field, dt) is None


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler for inductor")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch's compiler stack
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's compiler notes on the traced code
def test_the_compiled_estimate_is_the_eager_one(host, fresh_compiled):
    import nbtoolkit.shadow as shadow

    state = random_cluster(batch=2, n=5, softening=0.05, seed=8)
    dt = torch.tensor([0.01, 0.03], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
        compiled = kdk_error_coefficients(state, dt, 2)
    assert shadow.compiled_step_rates.compiled is not None and not shadow.compiled_step_rates.failed
    eager = shadow._step_rates(state.mass, state.position, state.velocity, state_accelerations(state),
                               dt.view(-1, 1, 1), state.G, state.softening, 2) / state_energy(state).abs()
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dim,softening,padding", [(3, 0.0, 0), (2, 0.05, 3), (3, 0.01, 5)])
def test_row_blocks_sum_what_the_pairs_sum(host, monkeypatch, dim, softening, padding):
    """The row-block path (N >= ROWS_MIN_N) gives the accelerations, jerks and dH2/dt of the path over the pairs
    i < j, in blocks of 7 rows (the last one shorter), with padding bodies placed on a real one."""
    import nbtoolkit.shadow as shadow

    n = shadow.ROWS_MIN_N + 5
    monkeypatch.setattr(shadow, "CHUNK_ELEMENTS", 4 * n * 7)
    state = random_cluster(batch=4, n=n, dim=dim, softening=softening, seed=11)
    mass = state.mass.clone()
    mass[1, n - padding:] = 0.0
    position = state.position.clone()
    position[1, n - padding:] = position[1, 0]  # padding coincident with a real body and with each other
    args = (mass, position, state.velocity, state.G, state.softening)
    by_pairs, by_rows = shadow._flow_pairs(*args), shadow._flow_rows(*args)
    assert shadow._flow(*args)[2].equal(by_rows[2])
    for pairs, rows in zip(by_pairs, by_rows):
        assert bool(rows.isfinite().all())
        torch.testing.assert_close(rows, pairs, rtol=1e-11, atol=1e-13 * float(pairs.abs().max()))


def test_the_doubled_steps_share_their_points_and_give_what_each_step_alone_gives(host):
    """Row k of the ladder is the coefficient of a step of 2^k dt computed on its own; the integrator contract's
    default (one batch of every step) gives the same rows as leapfrog's shared points."""
    from nbtoolkit.integrator import Integrator

    leapfrog = host.integrators.create("leapfrog")
    state = random_cluster(batch=3, n=5, softening=0.02, seed=11)
    dt = torch.tensor([0.002, 0.01, 0.03], dtype=torch.float64)
    ladder = kdk_error_coefficients(state, dt, 3)
    assert ladder.shape == (4, 3)
    for k in range(4):
        torch.testing.assert_close(ladder[k], kdk_error_coefficient(state, dt * 2**k), rtol=1e-12, atol=0.0)
    generic = Integrator.energy_error_coefficients(leapfrog, state, dt, 3)
    torch.testing.assert_close(leapfrog.energy_error_coefficients(state, dt, 3), generic, rtol=1e-12, atol=0.0)
    assert host.integrators.create("yoshida4").energy_error_coefficients(state, dt, 2) is None
