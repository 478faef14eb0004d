"""Default gate plugins: ``energy`` (the whole system, the default) and ``pair-energy`` (every member).

``energy`` is :class:`nbtoolkit.gate.EnergyGate`, |E1 - E0| / |E0| of each system's total energy.
On a star with planets it barely sees the planets: their orbital energies are a small share of
the total, so a step can change a planet's orbit a lot and still pass.

``pair-energy`` judges every body by the Kepler orbit it is on. Each real body i gets a
*companion*, chosen on the state before the step (so that the pairing does not flip within a
step): its most bound partner p, the body of lowest two-body energy E_ip; or, when p is itself
more tightly bound to another body q (p's own most bound partner is q != i, the pair (p, q) is
bound and closer than i is to p), the centre of mass of (p, q), so that the outer body of a
hierarchical triple or a planet beyond a heavier one is judged on its orbit around the inner
pair. The two-body energy of i with its companion c (masses m, M; Plummer softening eps),

    E = 1/2 mu |v_c - v_i|^2 - G m M / sqrt(|x_c - x_i|^2 + eps^2),   mu = m M / (m + M),

changes along an exact trajectory only through the forces of the other bodies, at the rate
P = mu (v_c - v_i) . (a_c - a_i + G (m + M) (x_c - x_i) / (|x_c - x_i|^2 + eps^2)^(3/2))
(an identity). The error of body i is the part of the change the step cannot account for,

    |E(after) - E(before) - h/2 (P(before) + P(after))| / |E(before)|,   h = t_after - t_before,

for bodies bound to their companion (E(before) < 0); unbound bodies have no Kepler orbit to
keep. A system's error is the largest of these and of its whole-system |dE/E|, so the gate is
never more lenient than ``energy``. The trapezoidal estimate of the work done by the other
bodies is exact for an isolated pair and third order in h otherwise, like a second-order step's
own energy error per step, but smaller by the strength of the perturbation. Padding bodies
(mass 0) are neither judged nor chosen as partners. Accelerations come from the states' caches
where present (leapfrog's), else cost a force evaluation each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.gate import EnergyGate
from nbtoolkit.physics import state_accelerations
from nbtoolkit.state import NBodyState


def pair_energies(state: NBodyState) -> Tensor:
    """Two-body energy E_ij = 1/2 mu_ij |v_j - v_i|^2 - G m_i m_j / sqrt(|x_j - x_i|^2 + eps^2) of
    every pair, (B, N, N), +inf on the diagonal and where i or j is a padding body. Built
    component by component (no (B, N, N, D) tensor)."""
    x, v, m = state.position, state.velocity, state.mass
    n = state.n_bodies
    r2 = x.new_full((*x.shape[:-2], n, n), state.softening**2)
    v2 = torch.zeros_like(r2)
    for xc, vc in zip(x.unbind(-1), v.unbind(-1)):
        dx, dv = xc.unsqueeze(-2) - xc.unsqueeze(-1), vc.unsqueeze(-2) - vc.unsqueeze(-1)
        r2, v2 = torch.addcmul(r2, dx, dx), torch.addcmul(v2, dv, dv)
    mi, mj = m.unsqueeze(-1), m.unsqueeze(-2)
    real = state.body_mask
    valid = real.unsqueeze(-1) & real.unsqueeze(-2) & ~torch.eye(n, dtype=torch.bool, device=x.device)
    total = torch.where(valid, mi + mj, torch.ones_like(r2))
    r2 = torch.where(valid, r2, torch.ones_like(r2))
    energy = 0.5 * mi * mj / total * v2 - state.G * mi * mj * r2.rsqrt()
    return torch.where(valid, energy, torch.full_like(energy, float("inf")))


def _take(values: Tensor, index: Tensor) -> Tensor:
    """``values`` (B, N) or (B, N, D) at body ``index`` (B, N) of the same system, per body."""
    if values.dim() == 2:
        return values.gather(1, index)
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class PairEnergyGate(EnergyGate):
    """The worst relative Kepler-energy error over every bound body and its companion, or the
    whole-system |dE/E| if that is larger (see the module docstring)."""

    label = "pair |dE/E|"

    def error(self, before: NBodyState, after: NBodyState, reference: Tensor | None = None) -> Tensor:
        total = super().error(before, after, reference)
        partner, inner, weight = companions(before.detach())
        e0, p0 = kepler_energy_and_power(before.detach(), partner, inner, weight)
        e1, p1 = kepler_energy_and_power(after, partner, inner, weight)
        h = (after.time - before.time.detach()).unsqueeze(-1)
        bound = before.body_mask & (e0 < 0)
        scale = torch.where(bound, e0.abs(), torch.ones_like(e0))
        drift = ((e1 - e0 - 0.5 * h * (p0 + p1)).abs() / scale).masked_fill(~bound, 0.0)
        worst = torch.maximum(total, drift.amax(-1))
        return torch.where(torch.isfinite(worst), worst, torch.full_like(worst, float("inf")))


def companions(state: NBodyState) -> tuple[Tensor, Tensor, Tensor]:
    """Each body's companion (see the module docstring), as (partner, inner, weight), each (B, N):
    the companion is body ``partner``, plus body ``inner`` with mass weight ``weight`` (1 where
    the companion is the centre of mass of the pair (partner, inner), else 0)."""
    with torch.no_grad():
        energy = pair_energies(state)
        real = state.body_mask
        first_real = real.to(torch.int64).argmax(-1, keepdim=True).expand_as(real)
        partner = torch.where(real, energy.argmin(-1), first_real)  # padding bodies: any real body
        best = energy.gather(-1, partner.unsqueeze(-1)).squeeze(-1)  # (B, N): E of (i, partner)
        inner = _take(partner, partner)  # the partner's own most bound partner
        own = torch.arange(state.n_bodies, device=partner.device).expand_as(partner)
        d_ip = (_take(state.position, partner) - state.position).norm(dim=-1)
        d_pq = (_take(state.position, inner) - _take(state.position, partner)).norm(dim=-1)
        binary = real & (inner != own) & (_take(best, partner) < 0) & (d_pq < d_ip)
        return partner, inner, binary.to(state.dtype)


def kepler_energy_and_power(state: NBodyState, partner: Tensor, inner: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Two-body energy E (B, N) of each body with its companion and its rate of change P (B, N)
    by the other bodies' forces (see the module docstring); differentiable in ``state``."""
    m = state.mass
    acc = state_accelerations(state)
    m_p, m_q = _take(m, partner), weight * _take(m, inner)
    m_c = m_p + m_q
    w_p, w_q = (m_p / m_c).unsqueeze(-1), (m_q / m_c).unsqueeze(-1)

    def companion(values: Tensor) -> Tensor:
        return w_p * _take(values, partner) + w_q * _take(values, inner)

    dx = companion(state.position) - state.position
    dv = companion(state.velocity) - state.velocity
    da = companion(acc) - acc
    r2 = dx.square().sum(-1) + state.softening**2
    mu = m * m_c / (m + m_c)
    inv_r = r2.rsqrt()
    energy = 0.5 * mu * dv.square().sum(-1) - state.G * m * m_c * inv_r
    pull = (state.G * (m + m_c) * inv_r**3).unsqueeze(-1)
    power = mu * (dv * (da + pull * dx)).sum(-1)
    return energy, power


@hookimpl
def nbtoolkit_register_gates(register) -> None:
    register("energy", EnergyGate)
    register("pair-energy", PairEnergyGate)
