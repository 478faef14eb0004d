"""Physics against known answers: Newton's law, energies, conservation structure, symmetry."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import (
    InvalidStateError,
    NBodyState,
    accelerations,
    angular_momentum,
    center_of_mass,
    kinetic_energy,
    linear_momentum,
    potential_energy,
    state_energy,
    to_center_of_mass_frame,
)


def test_two_body_acceleration_is_inverse_square_towards_the_other_body():
    mass = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float64)
    acc = accelerations(mass, pos, G=1.5)
    assert torch.allclose(acc[0, 0], torch.tensor([0.0, 1.5 * 3.0 / 4.0, 0.0], dtype=torch.float64))
    assert torch.allclose(acc[0, 1], torch.tensor([0.0, -1.5 * 2.0 / 4.0, 0.0], dtype=torch.float64))


def test_plummer_softened_force_and_potential_of_a_pair():
    eps = 0.3
    mass = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    pos = torch.tensor([[[0.0, 0.0], [0.4, 0.0]]], dtype=torch.float64)
    acc = accelerations(mass, pos, softening=eps)
    assert acc[0, 0, 0].item() == pytest.approx(0.4 / (0.4**2 + eps**2) ** 1.5, rel=1e-14)
    assert potential_energy(mass, pos, softening=eps).item() == pytest.approx(-1.0 / math.sqrt(0.16 + eps**2), rel=1e-14)


def test_accelerations_are_minus_gradient_of_potential_over_mass():
    state = random_cluster(3, 6, softening=0.05)
    pos = state.position.clone().requires_grad_(True)
    potential_energy(state.mass, pos, softening=0.05).sum().backward()
    expected = -pos.grad / state.mass.unsqueeze(-1)
    assert torch.allclose(accelerations(state.mass, state.position, softening=0.05), expected, rtol=1e-12, atol=1e-12)


def test_newton_third_law_total_force_vanishes():
    state = random_cluster(4, 9)
    force = state.mass.unsqueeze(-1) * accelerations(state.mass, state.position)
    assert force.sum(-2).abs().max().item() < 1e-12


def test_batched_equals_one_system_at_a_time_and_any_leading_shape():
    state = random_cluster(6, 5)
    acc = accelerations(state.mass, state.position)
    energy = state_energy(state)
    for b in range(6):
        one = state.index(b)
        assert torch.allclose(acc[b : b + 1], accelerations(one.mass, one.position), rtol=1e-14, atol=0)
        assert torch.allclose(energy[b : b + 1], state_energy(one), rtol=1e-14, atol=0)
    mass, pos = state.mass.reshape(2, 3, 5), state.position.reshape(2, 3, 5, 3)
    assert torch.allclose(accelerations(mass, pos).reshape(6, 5, 3), acc)


def test_permuting_bodies_permutes_accelerations_and_keeps_energy():
    state = random_cluster(2, 7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    acc = accelerations(state.mass, state.position)
    acc_p = accelerations(state.mass[:, perm], state.position[:, perm])
    assert torch.allclose(acc_p, acc[:, perm], rtol=1e-13, atol=1e-14)
    e = state_energy(state)
    e_p = state_energy(state.replace(mass=state.mass[:, perm], position=state.position[:, perm],
                                     velocity=state.velocity[:, perm]))
    assert torch.allclose(e, e_p, rtol=1e-13)


def test_kepler_energy_and_angular_momentum_match_orbital_elements():
    e, a, m1, m2 = 0.6, 1.7, 1.0, 3.0
    state, _ = two_body_orbit(e=e, a=a, m1=m1, m2=m2)
    mu, M = m1 * m2 / (m1 + m2), m1 + m2
    assert state_energy(state).item() == pytest.approx(-m1 * m2 / (2 * a), rel=1e-13)
    L = angular_momentum(state.mass, state.position, state.velocity).item()
    assert L == pytest.approx(mu * math.sqrt(M * a * (1 - e**2)), rel=1e-13)


def test_angular_momentum_2d_is_z_component_of_3d():
    s2 = random_cluster(3, 4, dim=2)
    pad = lambda t: torch.cat([t, torch.zeros_like(t[..., :1])], -1)  # noqa: E731
    L3 = angular_momentum(s2.mass, pad(s2.position), pad(s2.velocity))
    assert torch.allclose(angular_momentum(s2.mass, s2.position, s2.velocity), L3[..., 2])
    assert L3[..., :2].abs().max() == 0


def test_center_of_mass_frame_removes_bulk_motion_and_keeps_internal_energy():
    state = random_cluster(3, 5)
    com = to_center_of_mass_frame(state)
    assert center_of_mass(com.mass, com.position).abs().max() < 1e-14
    assert linear_momentum(com.mass, com.velocity).abs().max() < 1e-14
    v_com = linear_momentum(state.mass, state.velocity) / state.mass.sum(-1, keepdim=True)
    bulk = 0.5 * state.mass.sum(-1) * v_com.square().sum(-1)
    assert torch.allclose(kinetic_energy(state.mass, state.velocity) - bulk, kinetic_energy(com.mass, com.velocity))


def test_energy_is_differentiable_without_nans_and_gradient_matches_finite_difference():
    state = random_cluster(2, 4)
    dt = torch.tensor([0.01, 0.02], dtype=torch.float64, requires_grad=True)
    moved = state.position + dt[:, None, None] * state.velocity
    e = (kinetic_energy(state.mass, state.velocity) + potential_energy(state.mass, moved)).sum()
    (grad,) = torch.autograd.grad(e, dt)
    assert torch.isfinite(grad).all()
    h = 1e-6
    def energy_at(d):
        p = state.position + d[:, None, None] * state.velocity
        return (kinetic_energy(state.mass, state.velocity) + potential_energy(state.mass, p)).sum()
    step0 = torch.tensor([h, 0.0], dtype=torch.float64)
    fd0 = (energy_at(dt.detach() + step0) - energy_at(dt.detach() - step0)) / (2 * h)
    assert grad[0].item() == pytest.approx(fd0.item(), rel=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("position", float("nan"), "'position' has a non-finite"),
        ("velocity", float("inf"), "'velocity' has a non-finite"),
        ("mass", 0.0, "'mass' must be > 0"),
        ("mass", -1.0, "'mass' must be > 0"),
    ],
)
def test_invalid_states_are_rejected_naming_the_field(field, value, message):
    state = random_cluster(2, 3)
    bad = getattr(state, field).clone()
    bad[1, 2] = value
    with pytest.raises(InvalidStateError, match=message):
        NBodyState.from_arrays(**{**dict(mass=state.mass, position=state.position, velocity=state.velocity), field: bad})


def test_shape_mismatch_and_coincident_bodies_are_rejected():
    with pytest.raises(InvalidStateError, match="'velocity' shape"):
        NBodyState.from_arrays([1.0, 1.0], [[0, 0], [1, 0]], [[0, 0]])
    with pytest.raises(InvalidStateError, match="'position' must have shape"):
        NBodyState.from_arrays([1.0, 1.0], [[0, 0, 0, 0], [1, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(InvalidStateError, match="bodies 0 and 2 of system 0 coincide"):
        NBodyState.from_arrays([1.0, 1.0, 1.0], [[0, 0], [1, 0], [0, 0]], [[0, 0]] * 3)
    softened = NBodyState.from_arrays([1.0, 1.0], [[0, 0], [0, 0]], [[0, 0], [0, 1]], softening=0.1)
    assert torch.isfinite(accelerations(softened.mass, softened.position, softening=0.1)).all()


def test_scatter_replaces_the_given_systems_and_leaves_the_original_alone():
    base = random_cluster(3, 4, seed=0)
    part = random_cluster(1, 4, seed=10).replace(time=torch.tensor([5.0], dtype=torch.float64))
    idx = torch.tensor([1])
    out = base.scatter(idx, part)
    assert torch.equal(out.position[1], part.position[0]) and torch.equal(out.velocity[1], part.velocity[0])
    assert out.time.tolist() == [0.0, 5.0, 0.0]
    for b in (0, 2):
        assert torch.equal(out.position[b], base.position[b]) and torch.equal(out.velocity[b], base.velocity[b])
    assert torch.equal(out.mass, base.mass) and base.time.tolist() == [0.0, 0.0, 0.0]
