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
the end (positions and velocities predicted to second order, the accelerations computed there), or where
that mean is smaller, its value at the middle: where dH2/dt changes sign within the step (a turning point),
the mean cancels and the step's error comes from the next order, which the middle's value bounds. With
the middle's value alone, a step whose error grows towards its end (a pair closing in) is underestimated
more often; with the larger of the middle's and the end's, a step that starts at a turning point is
overestimated twofold (Kepler e = 0.1 from apocentre took 119 steps with the ``learned`` predictor instead
of 111); with the accelerations at the predicted points taken to first order (a + dt da/dt) instead of computed,
the points are off the orbit, and on a circle, where dH2/dt is 0, the estimate is not (Kepler e = 0 over three
periods took 75 steps instead of 67). dH2/dt needs the accelerations and jerks (da/dt) of every body: the
three values are computed for a batch of 3 B systems, over the pairs i < j for fewer than :data:`ROWS_MIN_N`
bodies, and above, in blocks of rows i (all j) sized like the force kernel's, so that every temporary stays in
cache (:mod:`nbtoolkit.kernel`): 6.5x faster than the pairs at N = 256, 7.3x at 1024 (``benchmarks/bench_predict.py``),
the same sums to round-off. :func:`kdk_error_coefficients` estimates steps of h, 2h, ..., 2^k h at once,
sharing their points (0, h/2, h, 2h, ..., 2^k h: k + 3 of them), so that a predictor can check that the estimate
holds over longer steps (:mod:`plugins.error_cap`). An external field would add its own Hessian to Q: the
estimate exists only without one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .compiled import CompiledFunction
from .kernel import DEVICE_CHUNK_ELEMENTS
from .physics import state_accelerations, state_energy
from .state import NBodyState
from .threads import CHUNK_ELEMENTS

#: from this many bodies on, :func:`_flow` works in blocks of rows instead of over the pairs i < j (below it the
#: pairs are fewer operations; the compiled estimate, NBTOOLKIT_COMPILE=1, is used only there)
ROWS_MIN_N = 24


def _pair_geometry(mass: Tensor, position: Tensor, velocity: Tensor, softening: float
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(i, j, r, u, rho^2, real) over the pairs i < j of N bodies: their indices (P,), r = x_j - x_i and
    u = v_j - v_i component first, (D, B, P), so that a dot product is a sum of D contiguous slabs, the softened
    squared separation rho^2 (B, P; 1 for a pair with a padding body) and whether both bodies are real (B, P)."""
    i, j = torch.triu_indices(mass.shape[-1], mass.shape[-1], offset=1, device=position.device)
    real = (mass.index_select(-1, i) > 0) & (mass.index_select(-1, j) > 0)
    x, v = position.permute(2, 0, 1), velocity.permute(2, 0, 1)  # (D, B, N)
    r = x.index_select(-1, j) - x.index_select(-1, i)
    u = v.index_select(-1, j) - v.index_select(-1, i)
    rho2 = torch.where(real, r.square().sum(0) + softening**2, torch.ones_like(real, dtype=r.dtype))
    return i, j, r, u, rho2, real


def _per_body(on_i: Tensor, on_j: Tensor, i: Tensor, j: Tensor, n: int) -> Tensor:
    """(B, N, D): for each body, the sum of what its pairs i < j give it, ``on_i`` (D, B, P) to body i and ``on_j``
    to body j. Placed in a dense (D, B, N * N) table and summed along its rows: a copy and a contiguous
    reduction, 2-3x faster on a CPU than accumulating the P pairs into N bodies with ``index_add_``."""
    table = on_i.new_zeros(*on_i.shape[:2], n * n)
    table.index_copy_(-1, i * n + j, on_i).index_copy_(-1, j * n + i, on_j)
    return table.view(*on_i.shape[:2], n, n).sum(-1).permute(1, 2, 0)


def _flow(mass: Tensor, position: Tensor, velocity: Tensor, G: float, softening: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`flow_derivatives` for masses (B, N), positions and velocities (B, N, D)."""
    if mass.shape[-1] >= ROWS_MIN_N:
        return _flow_rows(mass, position, velocity, G, softening)
    return _flow_pairs(mass, position, velocity, G, softening)


def _flow_pairs(mass: Tensor, position: Tensor, velocity: Tensor, G: float, softening: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_flow` over the pairs i < j, component first."""
    i, j, r, u, rho2, real = _pair_geometry(mass, position, velocity, softening)
    n = mass.shape[-1]
    mi, mj = mass.index_select(-1, i), mass.index_select(-1, j)
    per_r3 = torch.where(real, G / rho2.pow(1.5), torch.zeros_like(rho2))  # G / rho^3, 0 for padding
    s, u2 = (r * u).sum(0), u.square().sum(0)
    pull = per_r3 * r  # G r / rho^3: body i is pulled by m_j times this, body j by -m_i times it
    rate = per_r3 * (u - 3 * (s / rho2) * r)  # its time derivative
    acceleration = _per_body(mj * pull, -mi * pull, i, j, n)
    jerk = _per_body(mj * rate, -mi * rate, i, j, n)
    a = acceleration.permute(2, 0, 1)
    w = a.index_select(-1, j) - a.index_select(-1, i)
    uw, rw = (u * w).sum(0), (r * w).sum(0)
    rho5 = rho2.pow(2.5)
    k = G * mi * mj * real
    q_dot = (k * ((2 * uw * rho2 + 2 * u2 * s - 6 * s * (u2 + rw)) / rho5
                  - 5 * (u2 * rho2 - 3 * s * s) * s / (rho5 * rho2))).sum(-1)
    p_dot = 2 * (mass * (acceleration * jerk).sum(-1)).sum(-1)
    return acceleration, jerk, q_dot / 12 - p_dot / 24


def _flow_rows(mass: Tensor, position: Tensor, velocity: Tensor, G: float, softening: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_flow` in blocks of rows i with all columns j, each temporary (B, rows, N) within the force kernel's
    chunk (CHUNK_ELEMENTS on a CPU): a first pass sums the accelerations and jerks, a second, which needs every body's
    acceleration, the rate of Q over all ordered pairs (each pair twice). 1 / rho^2 is made exactly 0 on the diagonal
    and for pairs with a padding body (rho^2 = inf), and the rate of Q is written in powers of 1 / rho alone,

        d/dt of u . K u / (G m_i m_j) = 2 (u . w) / rho^3 - s (9 u^2 + 6 r . w) / rho^5 + 15 s^3 / rho^7,

    (s = r . u, w = a_j - a_i), so that those pairs add exactly 0."""
    b, n, dim = position.shape
    x, v = position.transpose(1, 2).contiguous(), velocity.transpose(1, 2).contiguous()  # (B, D, N)
    g_mass = (G * mass).unsqueeze(-2)  # (B, 1, N): G m_j
    real = mass > 0
    padded: Tensor | None = None  # (B, N, N): inf for pairs with a padding body, 0 for the others
    if not bool(real.all()):
        both = real.unsqueeze(-1) & real.unsqueeze(-2)
        padded = torch.zeros_like(both, dtype=x.dtype).masked_fill_(~both, torch.inf)
    chunk = CHUNK_ELEMENTS if x.device.type == "cpu" else DEVICE_CHUNK_ELEMENTS  # on a GPU, few large launches
    step = max(1, chunk // (b * n))

    def geometry(r0: int, r1: int) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Tensor]:
        """(r, u per component, 1 / rho^2, 1 / rho^3, s = r . u), each (B, rows, N), of rows r0 to r1."""
        r = [c.unsqueeze(-2) - c.narrow(-1, r0, r1 - r0).unsqueeze(-1) for c in x.unbind(1)]  # x_j - x_i
        u = [c.unsqueeze(-2) - c.narrow(-1, r0, r1 - r0).unsqueeze(-1) for c in v.unbind(1)]
        rho2 = r[0] * r[0]
        s = r[0] * u[0]
        for rc, uc in zip(r[1:], u[1:]):
            rho2.addcmul_(rc, rc)
            s.addcmul_(rc, uc)
        rho2.add_(softening**2).diagonal(r0, -2, -1).fill_(torch.inf)
        if padded is not None:
            rho2.add_(padded.narrow(-2, r0, r1 - r0))
        inv = rho2.reciprocal_()
        return r, u, inv, inv.sqrt().mul_(inv), s

    acceleration, jerk = x.new_empty(b, dim, n), x.new_empty(b, dim, n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        r, u, inv, inv3, s = geometry(r0, r1)
        pull = inv3.mul_(g_mass)  # G m_j / rho^3
        turn = (3 * s).mul_(inv).mul_(pull)  # 3 G m_j s / rho^5
        for c in range(dim):
            acceleration[:, c, r0:r1] = (r[c] * pull).sum(-1)
            jerk[:, c, r0:r1] = (u[c] * pull).sum(-1) - (r[c] * turn).sum(-1)
    q_rate = x.new_zeros(b)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        r, u, inv, inv3, s = geometry(r0, r1)
        w = [a.unsqueeze(-2) - a.narrow(-1, r0, r1 - r0).unsqueeze(-1) for a in acceleration.unbind(1)]
        uw, rw, u2 = u[0] * w[0], r[0] * w[0], u[0] * u[0]
        for c in range(1, dim):
            uw.addcmul_(u[c], w[c])
            rw.addcmul_(r[c], w[c])
            u2.addcmul_(u[c], u[c])
        rate = (15 * s * s).mul_(inv).sub_(u2.mul_(9).add_(rw, alpha=6)).mul_(s).mul_(inv).add_(uw, alpha=2)
        q_rate += (rate.mul_(inv3).mul_(g_mass).sum(-1) * mass.narrow(-1, r0, r1 - r0)).sum(-1)
    a, da = acceleration.transpose(1, 2), jerk.transpose(1, 2)
    p_rate = 2 * (mass * (a * da).sum(-1)).sum(-1)
    return a, da, q_rate / 24 - p_rate / 24


def flow_derivatives(state: NBodyState, position: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a, da/dt, dH2/dt) of the mutual (softened) gravity of ``state``'s bodies at the phase-space point
    (``position``, ``velocity``), each (B, N, D): the accelerations sum_j G m_j r / rho^3, the jerks
    sum_j G m_j (u / rho^3 - 3 (r . u) r / rho^5) and, (B,), the rate of change of H2 along the exact flow through
    that point (module doc)."""
    return _flow(state.mass, position, velocity, state.G, state.softening)


def shadow_term(state: NBodyState) -> Tensor:
    """H2 (B,): the coefficient of h^2 in kick-drift-kick leapfrog's modified Hamiltonian (module doc)."""
    i, j, r, u, rho2, real = _pair_geometry(state.mass, state.position, state.velocity, state.softening)
    k = state.G * state.mass.index_select(-1, i) * state.mass.index_select(-1, j) * real
    s = (r * u).sum(0)
    q = (k * (u.square().sum(0) * rho2 - 3 * s * s) / rho2.pow(2.5)).sum(-1)
    p = (state.mass * state_accelerations(state).square().sum(-1)).sum(-1)
    return q / 12 - p / 24


def _step_rates(mass: Tensor, position: Tensor, velocity: Tensor, acceleration: Tensor, h: Tensor, G: float,
                softening: float, doublings: int = 0) -> Tensor:
    """(doublings + 1, B): for k = 0 ... doublings, max(|Simpson's mean of dH2/dt over a step of 2^k h|, |dH2/dt at
    its middle|), h (B, 1, 1), from the state's masses, positions, velocities and accelerations (module doc). The
    steps share their points: dH2/dt is computed at 0, h/2, h, 2h, ..., 2^doublings h, as one batch of
    (doublings + 3) B systems, and the step of 2^k h takes the point of 2^(k-1) h as its middle."""
    times = [torch.zeros_like(h), h / 2] + [h * 2.0**k for k in range(doublings + 1)]
    rates = _flow(mass.repeat(len(times), 1),
                  torch.cat([position + velocity * t + acceleration * (t * t / 2) for t in times]),
                  torch.cat([velocity + acceleration * t for t in times]), G, softening)[2].view(len(times), -1)
    start, middle, end = rates[0], rates[1:-1], rates[2:]
    return torch.maximum(((start + 4 * middle + end) / 6).abs(), middle.abs())


#: :func:`_step_rates` compiled (``NBTOOLKIT_COMPILE=1``), one graph per batch shape, used below ROWS_MIN_N bodies: 5x
#: faster at N = 2 than eager (one call, one core); from ROWS_MIN_N on, the row blocks, eager, take less time than the
#: compiled pairs (0.46 against 0.67 ms at N = 64, 5.2 against 10.7 at 256); eager again after one warning if
#: compiling fails
compiled_step_rates = CompiledFunction(_step_rates, "leapfrog error estimate", dynamic=False)


def kdk_error_coefficients(state: NBodyState, dt: Tensor, doublings: int = 0) -> Tensor:
    """C (doublings + 1, B): row k such that one kick-drift-kick step of 2^k ``dt`` (B,) changes the energy by
    about |Delta E / E| = C (2^k dt)^3: the larger of |the mean of dH2/dt over the step| (Simpson's rule on its
    values at the start, the middle and the end) and |dH2/dt at the middle|, over |E| (module doc). Not
    differentiable (computed without a graph); inf where E = 0."""
    with torch.no_grad():
        args = (state.mass.detach(), state.position.detach(), state.velocity.detach(),
                state_accelerations(state).detach(), dt.detach().view(-1, 1, 1), float(state.G), float(state.softening),
                doublings)
        compiled = compiled_step_rates.available() and state.n_bodies < ROWS_MIN_N
        rates = compiled_step_rates(*args) if compiled else None
        if rates is None:
            rates = _step_rates(*args)
        return rates / state_energy(state).detach().abs()


def kdk_error_coefficient(state: NBodyState, dt: Tensor) -> Tensor:
    """C (B,) such that one kick-drift-kick step of ``dt`` (B,) changes the energy by about |Delta E / E| = C dt^3
    (:func:`kdk_error_coefficients`, the step of ``dt`` alone)."""
    return kdk_error_coefficients(state, dt)[0]
