"""Leapfrog's modified Hamiltonian, and the energy error of one step that it predicts.

Kick-drift-kick leapfrog with a fixed step h conserves, instead of H = T + V, the modified
("shadow") Hamiltonian H~ = H + h^2 H2 + O(h^4) with

    H2 = Q / 12 - P / 24,    Q = v^T (grad^2 V) v,    P = sum_i m_i |a_i|^2

(Q sums, over pairs, u . K_ij u with u = v_j - v_i and K_ij = G m_i m_j (rho^2 I - 3 r r^T) / rho^5 the
Hessian of the pair's softened potential -G m_i m_j / rho, rho^2 = r^2 + eps^2). So over one step the
energy changes by

    Delta H = -h^2 (H2(end) - H2(start)) + O(h^5) ~ -h^3 dH2/dt (at the step's middle),

and the relative energy error the gate judges is |Delta E / E| ~ C h^3 with C = |dH2/dt| / |E|. Taken
at the step's start, dH2/dt vanishes wherever the orbit is symmetric (a Kepler orbit's apocentre and
pericentre, the figure-eight's start), where the step's error is not zero. :func:`kdk_error_coefficient`
takes the mean of dH2/dt over the step by Simpson's rule, from its values at the start, the middle and
the end (positions and velocities predicted to second order, the acceleration to first), or where that
mean is smaller, its value at the middle: where dH2/dt changes sign within the step (a turning point),
the mean cancels and the step's error comes from the next order, which the middle's value bounds. With
the middle's value alone, a step whose error grows towards its end (a pair closing in) is underestimated
more often; with the larger of the middle's and the end's, a step that starts at a turning point is
overestimated twofold (Kepler e = 0.1 from apocentre took 119 steps with the ``learned`` predictor instead
of 115). dH2/dt needs the jerk (da/dt) of every body; the three values cost about as much as three force
evaluations, computed on all pairs (B, N, N, D). An external field would add its own Hessian to Q: the
estimate exists only without one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .physics import state_accelerations, state_energy
from .state import NBodyState


def _pair_geometry(state: NBodyState, position: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(r, u, rho^2, k): r = x_j - x_i and u = v_j - v_i (B, N, N, D), the softened squared separation
    rho^2 (B, N, N) and k = G m_i m_j (B, N, N), both for the pairs of two distinct real bodies; on the
    diagonal and for pairs with a padding body k = 0 and rho^2 = 1, so that they add nothing."""
    n = position.shape[-2]
    r = position.unsqueeze(-3) - position.unsqueeze(-2)
    u = velocity.unsqueeze(-3) - velocity.unsqueeze(-2)
    eye = torch.eye(n, dtype=torch.bool, device=position.device)
    k = (state.G * state.mass.unsqueeze(-1) * state.mass.unsqueeze(-2)).masked_fill(eye, 0.0)
    rho2 = torch.where(k != 0, r.square().sum(-1) + state.softening**2, torch.ones_like(k))
    return r, u, rho2, k


def jerks(state: NBodyState, position: Tensor | None = None, velocity: Tensor | None = None) -> Tensor:
    """da_i/dt (B, N, D) of the mutual (softened) gravity at ``position`` and ``velocity`` (default: the
    state's): sum_j G m_j (u / rho^3 - 3 (r . u) r / rho^5)."""
    position = state.position if position is None else position
    velocity = state.velocity if velocity is None else velocity
    r, u, rho2, k = _pair_geometry(state, position, velocity)
    s = (r * u).sum(-1)
    per_mass = state.G * state.mass.unsqueeze(-2) * (k != 0)  # G m_j, 0 on the diagonal and for padding
    return ((per_mass / rho2.pow(1.5)).unsqueeze(-1) * (u - 3 * (s / rho2).unsqueeze(-1) * r)).sum(-2)


def shadow_term(state: NBodyState) -> Tensor:
    """H2 (B,): the coefficient of h^2 in kick-drift-kick leapfrog's modified Hamiltonian (module doc)."""
    r, u, rho2, k = _pair_geometry(state, state.position, state.velocity)
    s = (r * u).sum(-1)
    q = (k * (u.square().sum(-1) * rho2 - 3 * s * s) / rho2.pow(2.5)).sum((-1, -2)) / 2  # each pair once
    p = (state.mass * state_accelerations(state).square().sum(-1)).sum(-1)
    return q / 12 - p / 24


def shadow_rate(state: NBodyState, position: Tensor, velocity: Tensor, acceleration: Tensor) -> Tensor:
    """dH2/dt (B,) along the exact flow at the phase-space point (``position``, ``velocity``), each
    (B, N, D), whose mutual acceleration is ``acceleration`` (B, N, D)."""
    r, u, rho2, k = _pair_geometry(state, position, velocity)
    w = acceleration.unsqueeze(-3) - acceleration.unsqueeze(-2)
    s, u2, uw, rw = (r * u).sum(-1), u.square().sum(-1), (u * w).sum(-1), (r * w).sum(-1)
    rho5 = rho2.pow(2.5)
    q_dot = (k * ((2 * uw * rho2 + 2 * u2 * s - 6 * s * (u2 + rw)) / rho5
                  - 5 * (u2 * rho2 - 3 * s * s) * s / (rho5 * rho2))).sum((-1, -2)) / 2
    p_dot = 2 * (state.mass * (acceleration * jerks(state, position, velocity)).sum(-1)).sum(-1)
    return q_dot / 12 - p_dot / 24


def kdk_error_coefficient(state: NBodyState, dt: Tensor) -> Tensor:
    """C (B,) such that one kick-drift-kick step of ``dt`` (B,) changes the energy by about |Delta E / E| = C dt^3:
    the larger of |the mean of dH2/dt over the step| (Simpson's rule on its values at the start, the middle and the
    end) and |dH2/dt at the middle|, over |E|, the middle and the end predicted from the state by Taylor expansion
    (module doc). Not differentiable (computed without a graph); inf where E = 0."""
    with torch.no_grad():
        h = dt.detach().view(-1, 1, 1)
        a = state_accelerations(state).detach()
        x, v = state.position.detach(), state.velocity.detach()
        jerk = jerks(state, x, v)
        start, middle, end = (shadow_rate(state, x + v * t + a * (t * t / 2), v + a * t, a + jerk * t)
                              for t in (torch.zeros_like(h), h / 2, h))
        mean = (start + 4 * middle + end) / 6
        return torch.maximum(mean.abs(), middle.abs()) / state_energy(state).detach().abs()
