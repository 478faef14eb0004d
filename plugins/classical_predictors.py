"""Classical dt rules: ``constant``, ``aarseth`` and ``freefall``. Each has one declared option (the
timestep ``dt``, or the accuracy parameter ``eta``) and no trainable parameters; they serve as
baselines, as references in the viewer and as fallbacks for learned predictors.

Both adaptive rules are scale-covariant: scaling lengths by L and masses by M (velocities by
sqrt(G M / L)) scales their dt by sqrt(L^3 / (G M)).
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.options import Option, check_arguments, number
from nbtoolkit.physics import closest_free_fall_time
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState

#: the accuracy parameter of the adaptive rules: dt is proportional to it
ETA = Option("accuracy parameter: dt is proportional to it", number(0.0))


class ConstantDt(DtPredictor):
    """dt = the given constant for every system."""

    time_even = True

    def __init__(self, dt: Annotated[float, Option("the timestep of every step", number(0.0))] = 1e-3) -> None:
        super().__init__()
        self.dt = check_arguments(ConstantDt, dt=dt)["dt"]

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        return torch.full((state.batch_size,), self.dt, dtype=state.dtype, device=state.device)


class AarsethDt(DtPredictor):
    """Acceleration/jerk criterion, regularised so it is finite and > 0 for every valid state:

    dt = eta * min_i A_i / sqrt(|j_i|^2 + A_i^3 / r_i)

    with j_i = da_i/dt the jerk, r_i the distance from body i to its nearest neighbour and
    A_i = sum_j G m_j / r_ij^2 the sum of the *magnitudes* of the pull of every other body.
    For two bodies A_i = |a_i| and this is Aarseth's first-order rule eta |a|/|j| where the jerk
    dominates; for bodies at rest (j = 0) it becomes eta sqrt(r/A), a free-fall-like time. Using
    A_i instead of |a_i| keeps a body whose pulls cancel (the middle body of the figure-eight at
    its start, a = 0) from forcing dt = 0. Padding bodies (mass 0) are ignored.
    """

    time_even = True

    def __init__(self, eta: Annotated[float, ETA] = 0.02) -> None:
        super().__init__()
        self.eta = check_arguments(AarsethDt, eta=eta)["eta"]

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        m, x, v = state.mass, state.position, state.velocity
        n = x.shape[-2]
        r = x.unsqueeze(-3) - x.unsqueeze(-2)  # r_ij = x_j - x_i, (B, N, N, D)
        u = v.unsqueeze(-3) - v.unsqueeze(-2)
        r2 = r.square().sum(-1)  # unsoftened |r_ij|^2, (B, N, N)
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        d2 = (r2 + state.softening**2) * (1 - eye) + eye
        inv_r3 = d2.pow(-1.5) * (1 - eye)
        rv = (r * u).sum(-1)
        w = (m.unsqueeze(-2) * inv_r3).unsqueeze(-1)
        jerk = state.G * (w * (u - 3 * (rv / d2).unsqueeze(-1) * r)).sum(-2)
        pull = state.G * (m.unsqueeze(-2) * inv_r3 * d2.sqrt()).sum(-1)  # A_i, (B, N)
        real = state.body_mask
        dist = r2.sqrt().masked_fill(eye.bool() | ~real.unsqueeze(-2), float("inf"))
        nearest = dist.amin(-1).clamp_min(state.softening) if n > 1 else torch.ones_like(pull)
        tau = pull / (jerk.square().sum(-1) + pull.pow(3) / nearest).sqrt()
        return self.eta * tau.masked_fill(~real, float("inf")).amin(-1)


class FreeFallDt(DtPredictor):
    """dt = eta * min over pairs sqrt(r_ij^3 / (G (m_i + m_j))), with r_ij softened as sqrt(r^2 + eps^2)."""

    time_even = True

    def __init__(self, eta: Annotated[float, ETA] = 0.05) -> None:
        super().__init__()
        self.eta = check_arguments(FreeFallDt, eta=eta)["eta"]

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        return self.eta * closest_free_fall_time(state)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("constant", ConstantDt)
    register("aarseth", AarsethDt)
    register("freefall", FreeFallDt)
