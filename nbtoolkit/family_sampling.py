"""Sampling helpers of the families in :mod:`nbtoolkit.families`: the parameter :class:`Sampler`
(numbers stay fixed, ``[low, high]`` ranges are drawn, log-uniformly for the :data:`LOG_PARAMS`),
random rotations, bound and unbound Kepler orbits and the move to the centre-of-mass frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError

#: samples drawn log-uniformly when given as a range
LOG_PARAMS = frozenset({"mass_ratio", "semi_major_axis", "total_mass", "inner_mass_ratio", "outer_mass_ratio",
                        "period_ratio", "scale", "spacing", "binary_mass_ratio", "intruder_mass_ratio",
                        "impact_parameter", "speed", "softening", "intruder_separation", "central_mass",
                        "pericentre", "particle_mass", "radius"})

#: log-sampled parameters whose value 0 switches their feature off (no softening, a single intruder, no central body)
OFF_AT_ZERO = frozenset({"softening", "intruder_separation", "central_mass"})


class Sampler:
    """Draws parameters of one family: numbers stay fixed, ``[low, high]`` ranges are sampled."""

    def __init__(self, family: str, params: dict[str, Any], defaults: dict[str, Any], generator: torch.Generator):
        self.family = family
        self.params = {**defaults, **params}
        self.generator = generator
        for key, value in self.params.items():
            self._check(key, value)

    def _check(self, key: str, value: Any) -> None:
        where = f"family '{self.family}': parameter {key}"
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) != 2:
            raise ConfigError(f"{where} must be a number or a range [low, high]; got {value!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{where} must hold finite numbers; got {value!r}")
        if isinstance(value, (list, tuple)) and value[0] > value[1]:
            raise ConfigError(f"{where}: range [low, high] has low > high; got {value!r}")
        if key in LOG_PARAMS and min(values) <= 0 and not (key in OFF_AT_ZERO and max(values) == 0):
            raise ConfigError(f"{where} must be > 0; got {value!r}")

    def bounds(self, key: str) -> tuple[float, float]:
        value = self.params[key]
        lo, hi = (value if isinstance(value, (list, tuple)) else (value, value))
        return float(lo), float(hi)

    def draw(self, key: str, size: int) -> Tensor:
        """``size`` samples of ``key`` (float64)."""
        lo, hi = self.bounds(key)
        u = torch.rand(size, generator=self.generator, dtype=torch.float64)
        if key in LOG_PARAMS:
            return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        return lo + (hi - lo) * u

    def draw_from_one(self, key: str, size: int) -> Tensor:
        """``size`` samples of ``key`` (float64) whose distance from 1, |1 - x|, is log-uniform between the
        range's ends' (a range on one side of 1: eccentricities of bound orbits near 1, or unbound ones)."""
        lo, hi = self.bounds(key)
        near, far = math.log(abs(1 - lo)), math.log(abs(1 - hi))
        u = torch.rand(size, generator=self.generator, dtype=torch.float64)
        return 1 + math.copysign(1.0, lo - 1) * torch.exp(near + (far - near) * u)

    def draw_int(self, key: str, size: int) -> Tensor:
        """``size`` integers in [low, high], log-uniform (so small and large N are both common)."""
        lo, hi = self.bounds(key)
        if lo < 1 or not float(lo).is_integer() or not float(hi).is_integer():
            raise ConfigError(f"family '{self.family}': parameter {key} must hold integers >= 1; got {self.params[key]!r}")
        u = torch.rand(size, generator=self.generator, dtype=torch.float64)
        return torch.exp(math.log(lo) + (math.log(hi + 1) - math.log(lo)) * u).floor().clamp(lo, hi).long()

    def dims(self, size: int) -> Tensor:
        lo, hi = self.bounds("dim")
        if lo not in (2.0, 3.0) or hi not in (2.0, 3.0):
            raise ConfigError(f"family '{self.family}': parameter dim must be 2, 3 or [2, 3]; got {self.params['dim']!r}")
        return torch.where(torch.rand(size, generator=self.generator) < 0.5, int(lo), int(hi))


def random_rotation(generator: torch.Generator) -> Tensor:
    """A uniformly random 3-D rotation matrix (3, 3), from a random unit quaternion."""
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float64)


def planar_rotation(generator: torch.Generator) -> Tensor:
    """A uniformly random rotation about the z axis (3, 3)."""
    phi = 2 * math.pi * float(torch.rand((), generator=generator, dtype=torch.float64))
    c, s = math.cos(phi), math.sin(phi)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def kepler_relative(a: Tensor, e: Tensor, mu: Tensor, mean_anomaly: Tensor) -> tuple[Tensor, Tensor]:
    """Relative position and velocity (B, 3) of bound Kepler orbits in the x-y plane, pericentre on +x.

    a, e, mu = G (m1 + m2) and mean anomaly (radians), each (B,). Kepler's equation is solved by
    Newton's method started at E = pi (which converges for every e < 1).
    """
    E = torch.full_like(a, math.pi)
    M = torch.remainder(mean_anomaly, 2 * math.pi)
    for _ in range(60):
        E = E - (E - e * torch.sin(E) - M) / (1 - e * torch.cos(E))
    cos_e, sin_e = torch.cos(E), torch.sin(E)
    root = torch.sqrt(1 - e * e)
    n = torch.sqrt(mu / a**3)
    denom = 1 - e * cos_e
    zero = torch.zeros_like(a)
    pos = torch.stack([a * (cos_e - e), a * root * sin_e, zero], -1)
    vel = torch.stack([-a * n * sin_e / denom, a * n * root * cos_e / denom, zero], -1)
    return pos, vel


def hyperbolic_relative(pericentre: Tensor, e: Tensor, mu: Tensor, distance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Relative position and velocity (B, 3) of unbound Kepler orbits (e > 1) in the x-y plane, pericentre
    on +x, at separation ``distance`` (>= pericentre) on the way in, and the time (B,) to pericentre.

    pericentre q, e, mu = G (m1 + m2) and distance, each (B,). With |a| = q / (e - 1) and the
    hyperbolic anomaly F of the start (r = |a| (e cosh F - 1)), the time to pericentre is
    sqrt(|a|^3 / mu) (e sinh F - F).
    """
    p = pericentre * (1 + e)  # semi-latus rectum
    nu = -torch.acos(((p / distance - 1) / e).clamp(-1.0, 1.0))  # true anomaly, negative: inbound
    radial = torch.sqrt(mu / p) * e * torch.sin(nu)
    tangential = torch.sqrt(mu * p) / distance
    cos_nu, sin_nu, zero = torch.cos(nu), torch.sin(nu), torch.zeros_like(nu)
    pos = torch.stack([distance * cos_nu, distance * sin_nu, zero], -1)
    vel = torch.stack([radial * cos_nu - tangential * sin_nu, radial * sin_nu + tangential * cos_nu, zero], -1)
    a = pericentre / (e - 1)
    anomaly = torch.acosh((distance / a + 1) / e)
    return pos, vel, torch.sqrt(a**3 / mu) * (e * torch.sinh(anomaly) - anomaly)


def _to_com(mass: Tensor, position: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
    w = (mass / mass.sum()).unsqueeze(-1)
    return position - (w * position).sum(0), velocity - (w * velocity).sum(0)


def _orient(position: Tensor, velocity: Tensor, dim: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    rot = random_rotation(generator) if dim == 3 else planar_rotation(generator)
    return position @ rot.T, velocity @ rot.T
