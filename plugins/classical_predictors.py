"""Classical dt rules: ``constant``, ``aarseth`` and ``freefall``. They have no parameters and
serve as baselines, as references in the viewer and as fallbacks for learned predictors.

Both adaptive rules are scale-covariant: scaling lengths by L and masses by M (velocities by
sqrt(G M / L)) scales their dt by sqrt(L^3 / (G M)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
from nbtoolkit.physics import pair_distances, state_accelerations
from nbtoolkit.predictor import DtPredictor, History
from nbtoolkit.state import NBodyState


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and value < float("inf")):
        raise ConfigError(f"{name} must be finite and > 0; got {value}")
    return value


class ConstantDt(DtPredictor):
    """dt = the given constant for every system."""

    def __init__(self, dt: float = 1e-3) -> None:
        super().__init__()
        self.dt = _positive("dt", dt)

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        return torch.full((state.batch_size,), self.dt, dtype=state.dtype, device=state.device)


class AarsethDt(DtPredictor):
    """Acceleration/jerk criterion, regularised so it is finite for every valid state:

    dt = eta * min_i |a_i| / sqrt(|j_i|^2 + |a_i|^3 / r_i)

    with a_i the acceleration, j_i = da_i/dt the jerk and r_i the distance from body i to its
    nearest neighbour. Where the jerk dominates this is Aarseth's first-order rule eta |a|/|j|;
    for bodies at rest (j = 0) it becomes eta sqrt(r/|a|), a free-fall-like time.
    """

    def __init__(self, eta: float = 0.02) -> None:
        super().__init__()
        self.eta = _positive("eta", eta)

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        m, x, v = state.mass, state.position, state.velocity
        n = x.shape[-2]
        acc = state_accelerations(state)
        r = x.unsqueeze(-3) - x.unsqueeze(-2)  # r_ij = x_j - x_i, (B, N, N, D)
        u = v.unsqueeze(-3) - v.unsqueeze(-2)
        d2 = r.square().sum(-1) + state.softening**2
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        d2 = d2 * (1 - eye) + eye
        inv_r3 = d2.pow(-1.5) * (1 - eye)
        rv = (r * u).sum(-1)
        w = (m.unsqueeze(-2) * inv_r3).unsqueeze(-1)
        jerk = state.G * (w * (u - 3 * (rv / d2).unsqueeze(-1) * r)).sum(-2)
        a_norm = acc.norm(dim=-1)
        nearest = pair_distances(x).amin(-1).clamp_min(state.softening) if n > 1 else torch.ones_like(a_norm)
        tau = a_norm / (jerk.square().sum(-1) + a_norm.pow(3) / nearest).sqrt()
        return self.eta * tau.amin(-1)


class FreeFallDt(DtPredictor):
    """dt = eta * min over pairs sqrt(r_ij^3 / (G (m_i + m_j))), with r_ij softened as sqrt(r^2 + eps^2)."""

    def __init__(self, eta: float = 0.05) -> None:
        super().__init__()
        self.eta = _positive("eta", eta)

    def forward(self, state: NBodyState, history: History | None = None) -> Tensor:
        r = pair_distances(state.position)
        if state.softening:
            r = (r.square() + state.softening**2).sqrt()
        msum = state.mass.unsqueeze(-1) + state.mass.unsqueeze(-2)
        t_ff = (r.pow(3) / (state.G * msum)).sqrt()
        return self.eta * t_ff.flatten(-2).amin(-1)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    register("constant", ConstantDt)
    register("aarseth", AarsethDt)
    register("freefall", FreeFallDt)
