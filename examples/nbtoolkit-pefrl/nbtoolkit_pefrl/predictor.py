"""``flyby``: a dt rule from the fly-by (collision) time and the free-fall time of every pair.

For each pair (i, j) with separation r_ij (Plummer-softened: sqrt(|x_j - x_i|^2 + eps^2)) and
relative speed u_ij = |v_j - v_i|, the two time scales

    t_fly = r_ij / u_ij                          (time to cover the separation at the current speed)
    t_ff  = sqrt(r_ij^3 / (G (m_i + m_j)))      (free-fall time of the pair)

are combined as tau_ij^-2 = t_fly^-2 + t_ff^-2, so that tau_ij <= min(t_fly, t_ff), the faster
process wins, and tau_ij = t_ff for bodies at rest (u = 0: finite, never 0/0). Then

    dt = eta * min_{i<j} tau_ij.

The rule is scale-covariant: scaling lengths by L and masses by M (velocities by sqrt(G M / L))
scales dt by sqrt(L^3 / (G M)). It is Galilean invariant (only relative velocities enter),
unchanged under v -> -v, and differentiable in the state (no square root of u^2).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from nbtoolkit.errors import InvalidStateError
from nbtoolkit.options import Option, check_arguments, number
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState


class FlybyDt(DtPredictor):
    """dt = eta * min over pairs (u_ij^2 / r_ij^2 + G (m_i + m_j) / r_ij^3)^(-1/2); needs N >= 2.

    ``eta`` (dimensionless, > 0) is the fraction of the shortest pair time scale taken as dt.
    Returns dt of shape (B,) in the time unit of the state.
    """

    def __init__(self, eta: Annotated[float, Option("fraction of the shortest pair time scale taken as dt",
                                                   number(0.0))] = 0.05) -> None:
        super().__init__()
        self.eta = check_arguments(FlybyDt, eta=eta)["eta"]

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        n = state.n_bodies
        if n < 2:
            raise InvalidStateError(f"flyby dt needs at least two bodies; the state has {n}")
        x, v, m = state.position, state.velocity, state.mass
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        off = 1 - eye
        r2 = (x.unsqueeze(-3) - x.unsqueeze(-2)).square().sum(-1) + state.softening**2
        r2 = r2 * off + eye  # diagonal -> 1: no division by zero, masked below
        u2 = (v.unsqueeze(-3) - v.unsqueeze(-2)).square().sum(-1)
        msum = m.unsqueeze(-1) + m.unsqueeze(-2)
        rate2 = (u2 / r2 + state.G * msum * r2.pow(-1.5)) * off  # tau_ij^-2, (B, N, N)
        return self.eta * rate2.flatten(-2).amax(-1).rsqrt()
