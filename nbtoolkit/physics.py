"""Vectorised Newtonian gravity with Plummer softening.

All functions take tensors with any leading batch shape ``...``: masses ``(..., N)``,
positions and velocities ``(..., N, D)``. Everything is differentiable (the diagonal
self-interaction never produces NaN gradients). The force kernel behind :func:`accelerations`
and :func:`potential_energy` (:mod:`nbtoolkit.kernel`) loops in Python only over chunks of a fixed size.
Energies are in the user's units with the given ``G``; softening ``eps`` enters as
``1 / sqrt(r^2 + eps^2)`` (Plummer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .field import field_accelerations, field_energy
from .kernel import accelerations, potential_energy
from .state import NBodyState


def kinetic_energy(mass: Tensor, velocity: Tensor) -> Tensor:
    """T = 1/2 sum_i m_i |v_i|^2. mass (..., N), velocity (..., N, D) -> (...)."""
    return 0.5 * (mass * velocity.square().sum(-1)).sum(-1)


def total_energy(mass: Tensor, position: Tensor, velocity: Tensor, G: float = 1.0, softening: float = 0.0) -> Tensor:
    """E = T + U, shape (...)."""
    return kinetic_energy(mass, velocity) + potential_energy(mass, position, G, softening)


def linear_momentum(mass: Tensor, velocity: Tensor) -> Tensor:
    """P = sum_i m_i v_i. (..., N), (..., N, D) -> (..., D)."""
    return (mass.unsqueeze(-1) * velocity).sum(-2)


def angular_momentum(mass: Tensor, position: Tensor, velocity: Tensor) -> Tensor:
    """L = sum_i m_i x_i cross v_i about the origin.

    Returns (..., 3) for D = 3 and the scalar z-component (...) for D = 2.
    """
    mv = mass.unsqueeze(-1) * velocity
    if position.shape[-1] == 2:
        return (position[..., 0] * mv[..., 1] - position[..., 1] * mv[..., 0]).sum(-1)
    return torch.linalg.cross(position, mv, dim=-1).sum(-2)


def center_of_mass(mass: Tensor, position: Tensor) -> Tensor:
    """Centre-of-mass position sum m_i x_i / sum m_i, (..., D)."""
    return (mass.unsqueeze(-1) * position).sum(-2) / mass.sum(-1, keepdim=True)


def pair_distances(position: Tensor) -> Tensor:
    """Unsoftened distances |x_j - x_i| (..., N, N), with +inf on the diagonal (built component by
    component: no (..., N, N, D) tensor)."""
    n = position.shape[-2]
    d = None
    for c in position.unbind(-1):
        dc = c.unsqueeze(-2) - c.unsqueeze(-1)
        d = dc * dc if d is None else torch.addcmul(d, dc, dc)
    if d is None:  # D = 0
        d = position.new_zeros(position.shape[:-2] + (n, n))
    eye = torch.eye(n, dtype=torch.bool, device=position.device)
    return torch.where(eye, torch.full_like(d, float("inf")), d.clamp_min(0)).sqrt()



def closest_free_fall_time(state: NBodyState) -> Tensor:
    """(B,) the smallest free-fall time sqrt(r_ij^3 / (G (m_i + m_j))) over pairs of real bodies
    (mass > 0), r_ij softened as sqrt(r^2 + eps^2); time units."""
    r = pair_distances(state.position)
    if state.softening:
        r = (r.square() + state.softening**2).sqrt()
    real = state.body_mask
    pair = real.unsqueeze(-1) & real.unsqueeze(-2)
    msum = state.mass.unsqueeze(-1) + state.mass.unsqueeze(-2)
    t_ff = (r.pow(3) / (state.G * msum)).sqrt().masked_fill(~pair, float("inf"))
    return t_ff.flatten(-2).amin(-1)

# ----------------------------------------------------------------------------- state wrappers
def state_accelerations(state: NBodyState) -> Tensor:
    """Accelerations of a state (B, N, D), its external field's included; uses the state's cache
    when present."""
    if state.acceleration is not None:
        return state.acceleration
    return accelerations_at(state, state.position)


def accelerations_at(state: NBodyState, position: Tensor, time: Tensor | None = None) -> Tensor:
    """The accelerations (B, N, D) the bodies of ``state`` would have at ``position`` (B, N, D) and
    ``time`` (B,) (default: the state's): their mutual gravity plus the state's external field.

    Integrators that evaluate forces at stage positions and times call this instead of
    :func:`accelerations` to see the field (and declare ``field_aware = True``). Without a field
    it is exactly :func:`accelerations`.
    """
    acc = accelerations(state.mass, position, state.G, state.softening)
    if state.field is None:
        return acc
    at = state.replace(position=position, time=state.time if time is None else time)
    return acc + field_accelerations(at)


def state_energy(state: NBodyState) -> Tensor:
    """Total energy of each system, (B,): kinetic plus mutual potential energy, plus with an
    external field the field's potential energy and frame term (:func:`nbtoolkit.field.field_energy`),
    the quantity the field's dynamics conserves."""
    energy = total_energy(state.mass, state.position, state.velocity, state.G, state.softening)
    if state.field is None:
        return energy
    return energy + field_energy(state)


def relative_energy_error(e0: Tensor, e1: Tensor) -> Tensor:
    """|E1 - E0| / |E0| elementwise (non-finite E1 gives inf, never NaN)."""
    err = (e1 - e0).abs() / e0.abs()
    return torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))


def to_center_of_mass_frame(state: NBodyState) -> NBodyState:
    """Shift positions and velocities so that the centre of mass is at rest at the origin."""
    xc = center_of_mass(state.mass, state.position).unsqueeze(-2)
    vc = center_of_mass(state.mass, state.velocity).unsqueeze(-2)
    return state.replace(position=state.position - xc, velocity=state.velocity - vc)


def time_reversed(state: NBodyState) -> NBodyState:
    """The state with every velocity reversed: flown forward, it retraces the original's past."""
    return state.replace(velocity=-state.velocity)
