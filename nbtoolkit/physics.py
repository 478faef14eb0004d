"""Vectorised Newtonian gravity with Plummer softening.

All functions take tensors with any leading batch shape ``...``: masses ``(..., N)``,
positions and velocities ``(..., N, D)``. Nothing loops over bodies or systems in Python and
everything is differentiable (the diagonal self-interaction is masked without producing NaN
gradients). Energies are in the user's units with the given ``G``; softening ``eps`` enters as
``1 / sqrt(r^2 + eps^2)`` (Plummer).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .state import NBodyState


@functools.lru_cache(maxsize=64)
def _off_diagonal(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(N, N) matrix of ones with a zero diagonal (cached: it is needed at every force evaluation)."""
    return 1 - torch.eye(n, dtype=dtype, device=device)


def _pair_geometry(position: Tensor, softening: float) -> tuple[Tensor, Tensor, Tensor]:
    """Displacements r_ij = x_j - x_i (..., N, N, D), softened squared distances (..., N, N)
    with the diagonal set to 1, and the off-diagonal mask (N, N) as the position dtype."""
    off = _off_diagonal(position.shape[-2], position.dtype, position.device)
    disp = position.unsqueeze(-3) - position.unsqueeze(-2)
    d2 = disp.square().sum(-1) + (softening**2 + 1 - off)  # diagonal -> 1 + eps^2: no 0**-1.5, no NaN gradients
    return disp, d2, off


def accelerations(mass: Tensor, position: Tensor, G: float = 1.0, softening: float = 0.0) -> Tensor:
    """Gravitational accelerations a_i = G sum_j m_j r_ij / (|r_ij|^2 + eps^2)^{3/2}.

    mass (..., N), position (..., N, D) -> acceleration (..., N, D). The sum over j is a batched
    matrix product, so no (..., N, N, D) weighted intermediate is formed.
    """
    disp, d2, off = _pair_geometry(position, softening)
    weights = d2.pow(-1.5) * (mass.unsqueeze(-2) * off)  # (..., N, N): m_j / r_ij^3, 0 on the diagonal
    return G * (weights.unsqueeze(-2) @ disp).squeeze(-2)


def kinetic_energy(mass: Tensor, velocity: Tensor) -> Tensor:
    """T = 1/2 sum_i m_i |v_i|^2. mass (..., N), velocity (..., N, D) -> (...)."""
    return 0.5 * (mass * velocity.square().sum(-1)).sum(-1)


def potential_energy(mass: Tensor, position: Tensor, G: float = 1.0, softening: float = 0.0) -> Tensor:
    """U = -G sum_{i<j} m_i m_j / sqrt(|r_ij|^2 + eps^2). mass (..., N), position (..., N, D) -> (...)."""
    _, d2, off = _pair_geometry(position, softening)
    mm = mass.unsqueeze(-1) * mass.unsqueeze(-2)
    return -0.5 * G * (mm * d2.rsqrt() * off).sum((-1, -2))


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
    """Unsoftened distances |x_j - x_i| (..., N, N), with +inf on the diagonal."""
    n = position.shape[-2]
    d = (position.unsqueeze(-3) - position.unsqueeze(-2)).square().sum(-1)
    eye = torch.eye(n, dtype=torch.bool, device=position.device)
    return torch.where(eye, torch.full_like(d, float("inf")), d.clamp_min(0)).sqrt()


# ----------------------------------------------------------------------------- state wrappers
def state_accelerations(state: NBodyState) -> Tensor:
    """Accelerations of a state (B, N, D); uses the state's cache when present."""
    if state.acceleration is not None:
        return state.acceleration
    return accelerations(state.mass, state.position, state.G, state.softening)


def state_energy(state: NBodyState) -> Tensor:
    """Total energy of each system, (B,)."""
    return total_energy(state.mass, state.position, state.velocity, state.G, state.softening)


def relative_energy_error(e0: Tensor, e1: Tensor) -> Tensor:
    """|E1 - E0| / |E0| elementwise (non-finite E1 gives inf, never NaN)."""
    err = (e1 - e0).abs() / e0.abs()
    return torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))


def to_center_of_mass_frame(state: NBodyState) -> NBodyState:
    """Shift positions and velocities so that the centre of mass is at rest at the origin."""
    xc = center_of_mass(state.mass, state.position).unsqueeze(-2)
    vc = center_of_mass(state.mass, state.velocity).unsqueeze(-2)
    return state.replace(position=state.position - xc, velocity=state.velocity - vc)
