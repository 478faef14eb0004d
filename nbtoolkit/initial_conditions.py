"""Initial conditions: the builders of two-body, three-body and cluster states.

Every builder returns an :class:`~nbtoolkit.state.NBodyState` in G = 1 units (unless a ``G``
parameter says otherwise), in the centre-of-mass frame (centre of mass at rest at the origin),
and checks its parameters (a :class:`~nbtoolkit.errors.ConfigError` names a bad one):

* :func:`kepler` — one bound two-body orbit of given eccentricity and semi-major axis.
* :func:`kepler_batch` — B Kepler orbits with eccentricities drawn uniformly from a range.
* :func:`figure_eight` — the Chenciner–Montgomery periodic three-body orbit.
* :func:`pythagorean` — Burrau's three-body problem (masses 3, 4, 5 at rest), which ends in an ejection.
* :func:`plummer` — an N-body realisation of a Plummer sphere in Hénon units.

:mod:`nbtoolkit.presets` gives them by name, with their periods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError
from .physics import kinetic_energy, to_center_of_mass_frame
from .state import DEFAULT_DTYPE, NBodyState

#: period of the figure-eight orbit in G = 1, unit-mass units (Chenciner & Montgomery 2000; Simó 2002)
FIGURE_EIGHT_PERIOD = 6.32591398

#: accepted spellings of the starting point of a Kepler orbit -> canonical name
_START_NAMES = {
    "apocentre": "apocentre",
    "apocenter": "apocentre",
    "pericentre": "pericentre",
    "pericenter": "pericentre",
}

#: Plummer radii are drawn from the enclosed-mass fraction truncated at this value (r < ~22.8 scale
#: radii), as in Aarseth, Hénon & Wielen (1974), so that no body starts absurdly far out
PLUMMER_MASS_CUT = 0.999


# ----------------------------------------------------------------------------- validation helpers
def _require(ok: bool, where: str, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name} must be {rule}; got {value!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_common(where: str, semi_major_axis: float, masses: Sequence[float], G: float, dim: int) -> tuple[float, float]:
    _require(_finite(semi_major_axis) and semi_major_axis > 0, where, "semi_major_axis", "a finite number > 0", semi_major_axis)
    _require(
        isinstance(masses, Sequence) and not isinstance(masses, str) and len(masses) == 2,
        where, "masses", "a pair (m1, m2)", masses,
    )
    m1, m2 = masses
    _require(_finite(m1) and _finite(m2) and m1 > 0 and m2 > 0, where, "masses", "two finite numbers > 0", masses)
    _require(_finite(G) and G > 0, where, "G", "a finite number > 0", G)
    _require(dim in (2, 3) and not isinstance(dim, bool), where, "dim", "2 or 3", dim)
    return float(m1), float(m2)


def _canonical_start(where: str, start: Any) -> str:
    key = start.lower() if isinstance(start, str) else None
    if key not in _START_NAMES:
        raise ConfigError(f"{where}: start must be one of {', '.join(_START_NAMES)}; got {start!r}")
    return _START_NAMES[key]


# ----------------------------------------------------------------------------- Kepler
def kepler_period(semi_major_axis: float | Tensor, total_mass: float | Tensor, G: float = 1.0) -> float | Tensor:
    """Orbital period of a bound two-body orbit, P = 2 pi sqrt(a^3 / (G M)) (time units of G)."""
    return 2.0 * math.pi * (semi_major_axis**3 / (G * total_mass)) ** 0.5


def _kepler_state(
    eccentricity: Tensor, semi_major_axis: float, m1: float, m2: float, start: str, G: float, dim: int
) -> NBodyState:
    """B two-body systems (eccentricity (B,)) with the relative orbit's apsides on the x axis.

    The relative vector r = x2 - x1 starts on +x at the chosen apsis, moving towards +y (so the
    orbit is counter-clockwise in the x-y plane, L_z > 0); bodies sit at x1 = -m2/M r, x2 = m1/M r.
    """
    e = eccentricity
    M = m1 + m2
    a = semi_major_axis
    sign = 1.0 if start == "apocentre" else -1.0
    separation = a * (1 + sign * e)
    speed = torch.sqrt(G * M * (1 - sign * e) / separation)  # vis-viva at the apsis
    B = e.shape[0]
    rel_x = torch.zeros(B, dim, dtype=e.dtype)
    rel_v = torch.zeros(B, dim, dtype=e.dtype)
    rel_x[:, 0] = separation
    rel_v[:, 1] = speed
    frac = torch.tensor([-m2 / M, m1 / M], dtype=e.dtype)[None, :, None]  # (1, 2, 1)
    mass = torch.tensor([m1, m2], dtype=e.dtype).expand(B, 2).clone()
    return NBodyState.from_arrays(mass, frac * rel_x[:, None, :], frac * rel_v[:, None, :], G=G, dtype=e.dtype)


def kepler(
    eccentricity: float = 0.5,
    semi_major_axis: float = 1.0,
    masses: Sequence[float] = (1.0, 1.0),
    start: str = "apocentre",
    G: float = 1.0,
    dim: int = 2,
    dtype: torch.dtype = DEFAULT_DTYPE,
) -> NBodyState:
    """One bound two-body orbit (B = 1, N = 2) in the centre-of-mass frame.

    The relative orbit has eccentricity ``eccentricity`` (0 <= e < 1) and semi-major axis
    ``semi_major_axis`` (> 0, length units). ``start`` picks where it begins: ``"apocentre"``
    (default; separation a(1+e), the bodies at their slowest) or ``"pericentre"`` (separation
    a(1-e), fastest); the American spellings ``"apocenter"``/``"pericenter"`` are accepted.
    The apsides lie on the x axis and the orbit turns counter-clockwise in the x-y plane
    (z = 0 when ``dim`` is 3). Energy E = -G m1 m2 / (2a); period :func:`kepler_period`.
    """
    where = "preset 'kepler'"
    _require(_finite(eccentricity) and 0 <= eccentricity < 1, where, "eccentricity", "in [0, 1)", eccentricity)
    m1, m2 = _check_common(where, semi_major_axis, masses, G, dim)
    start = _canonical_start(where, start)
    e = torch.tensor([float(eccentricity)], dtype=dtype)
    return _kepler_state(e, float(semi_major_axis), m1, m2, start, float(G), int(dim))


def kepler_batch(
    num_orbits: int = 8,
    e_min: float = 0.5,
    e_max: float = 0.95,
    seed: int = 0,
    semi_major_axis: float = 1.0,
    masses: Sequence[float] = (1.0, 1.0),
    start: str = "apocentre",
    G: float = 1.0,
    dim: int = 2,
    dtype: torch.dtype = DEFAULT_DTYPE,
) -> NBodyState:
    """``num_orbits`` Kepler systems batched into one state (B, 2, dim).

    Eccentricities are drawn uniformly in [e_min, e_max] (0 <= e_min <= e_max < 1) with a
    ``torch.Generator`` seeded by ``seed``, so the same seed gives the same batch. All orbits
    share ``semi_major_axis``, ``masses``, ``start`` and ``G`` (see :func:`kepler`), hence one
    period :func:`kepler_period`.
    """
    where = "preset 'kepler-batch'"
    _require(isinstance(num_orbits, int) and not isinstance(num_orbits, bool) and num_orbits >= 1,
             where, "num_orbits", "an integer >= 1", num_orbits)
    _require(_finite(e_min) and 0 <= e_min < 1, where, "e_min", "in [0, 1)", e_min)
    _require(_finite(e_max) and e_min <= e_max < 1, where, "e_max", f"in [e_min, 1) = [{e_min}, 1)", e_max)
    _require(isinstance(seed, int) and not isinstance(seed, bool), where, "seed", "an integer", seed)
    m1, m2 = _check_common(where, semi_major_axis, masses, G, dim)
    start = _canonical_start(where, start)
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(num_orbits, generator=generator, dtype=torch.float64)
    e = (e_min + (e_max - e_min) * u).to(dtype).clamp(max=e_max)
    return _kepler_state(e, float(semi_major_axis), m1, m2, start, float(G), int(dim))


# ----------------------------------------------------------------------------- three-body
def figure_eight(dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
    """The Chenciner–Montgomery figure-eight choreography (B = 1, N = 3, D = 2; G = 1, unit masses).

    x1 = -x2 = (0.97000436, -0.24308753), x3 = 0; v3 = (-0.93240737, -0.86473146),
    v1 = v2 = -v3 / 2 (Simó's initial conditions). Period :data:`FIGURE_EIGHT_PERIOD`,
    energy about -1.2871.
    """
    x1 = (0.97000436, -0.24308753)
    v3 = (-0.93240737, -0.86473146)
    position = [x1, (-x1[0], -x1[1]), (0.0, 0.0)]
    half = (-v3[0] / 2, -v3[1] / 2)
    velocity = [half, half, v3]
    return NBodyState.from_arrays([1.0, 1.0, 1.0], position, velocity, G=1.0, dtype=dtype)


def pythagorean(dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
    """Burrau's Pythagorean problem (B = 1, N = 3, D = 2; G = 1): masses 3, 4, 5 at rest at
    (1, 3), (-2, -1), (1, -1), the vertices of a 3-4-5 right triangle, each mass opposite the
    side of its length. The centre of mass is at the origin. Not periodic: after close
    encounters the lightest body is ejected around t ~ 60."""
    position = [(1.0, 3.0), (-2.0, -1.0), (1.0, -1.0)]
    return NBodyState.from_arrays([3.0, 4.0, 5.0], position, [(0.0, 0.0)] * 3, G=1.0, dtype=dtype)


# ----------------------------------------------------------------------------- Plummer sphere
def _unit_vectors(count: tuple[int, int], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Isotropic unit vectors in 3-D, shape (*count, 3)."""
    z = 1 - 2 * torch.rand(count, generator=generator, dtype=dtype)
    phi = 2 * math.pi * torch.rand(count, generator=generator, dtype=dtype)
    rho = torch.sqrt((1 - z * z).clamp_min(0))
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], -1)


def _plummer_speed_fractions(size: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """``size`` draws of q = v / v_esc from g(q) ~ q^2 (1 - q^2)^(7/2) by von Neumann rejection
    (accept q when 0.1 X < g(q); the bound 0.1 exceeds max g ~ 0.092). Rounds of vectorised draws."""
    accepted: list[Tensor] = []
    have = 0
    while have < size:
        draw = max(2 * (size - have), 16)  # acceptance is about 1/2
        q = torch.rand(draw, generator=generator, dtype=dtype)
        y = 0.1 * torch.rand(draw, generator=generator, dtype=dtype)
        keep = q[y < q * q * (1 - q * q) ** 3.5]
        accepted.append(keep)
        have += keep.numel()
    return torch.cat(accepted)[:size]


def _potential_scale(pair_r2: Tensor, pair_mm: Tensor, softening: float, target: float) -> Tensor:
    """The factor lambda (B,) with G sum m_i m_j / sqrt(lambda^2 r_ij^2 + eps^2) = target per system.

    pair_r2, pair_mm: (B, P) squared separations and mass products of the P = N(N-1)/2 pairs
    (G already folded into pair_mm). Without softening |U| scales as 1/lambda; with softening it
    is solved by bisection (|U| decreases monotonically in lambda) to the last bit.
    """
    unsoftened = (pair_mm * pair_r2.rsqrt()).sum(-1)
    hi = unsoftened / target  # |U_soft(hi)| < |U(hi)| = target
    if softening == 0:
        return hi
    lo = torch.zeros_like(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if bool(((mid <= lo) | (mid >= hi)).all()):
            break
        too_bound = (pair_mm * (mid[:, None] ** 2 * pair_r2 + softening**2).rsqrt()).sum(-1) > target
        lo = torch.where(too_bound, mid, lo)
        hi = torch.where(too_bound, hi, mid)
    return 0.5 * (lo + hi)


def plummer(
    n: int = 16,
    seed: int = 0,
    dim: int = 3,
    softening: float = 0.0,
    num_systems: int = 1,
    dtype: torch.dtype = DEFAULT_DTYPE,
) -> NBodyState:
    """A Plummer-sphere realisation of ``n`` equal-mass bodies (mass 1/n each) in Hénon units.

    Sampling follows Aarseth, Hénon & Wielen (1974): radii from the cumulative mass profile
    M(<r) = r^3 (1 + r^2)^(-3/2) (truncated at mass fraction :data:`PLUMMER_MASS_CUT`), speeds
    q v_esc(r) with q from g(q) ~ q^2 (1 - q^2)^(7/2) by rejection, isotropic directions. The
    draws come from a ``torch.Generator`` seeded by ``seed``. The system is moved to the
    centre-of-mass frame and then positions and velocities are rescaled so that, for this very
    realisation and with G = 1, total mass 1 and the given Plummer ``softening`` in the
    potential, U = -1/2 and T = 1/4 exactly (to round-off): E = -1/4 and virial ratio 2T/|U| = 1.

    ``dim = 2`` keeps the x-y projection of the 3-D sample (positions and velocities) before
    the centring and rescaling. ``num_systems`` independent realisations from the same
    generator are batched into one state (B = num_systems); each is rescaled on its own.
    ``softening`` must be below (n - 1)/n, otherwise no scaling reaches U = -1/2.
    """
    where = "preset 'plummer'"
    _require(isinstance(n, int) and not isinstance(n, bool) and n >= 2, where, "n", "an integer >= 2", n)
    _require(isinstance(seed, int) and not isinstance(seed, bool), where, "seed", "an integer", seed)
    _require(dim in (2, 3) and not isinstance(dim, bool), where, "dim", "2 or 3", dim)
    _require(isinstance(num_systems, int) and not isinstance(num_systems, bool) and num_systems >= 1,
             where, "num_systems", "an integer >= 1", num_systems)
    max_softening = (n - 1) / n  # |U| of n bodies of mass 1/n all at one point is (n-1)/(2 n eps)
    _require(_finite(softening) and 0 <= softening < max_softening, where, "softening",
             f"in [0, (n-1)/n) = [0, {max_softening:.6g}) for n = {n}", softening)
    softening = float(softening)

    B = num_systems
    generator = torch.Generator().manual_seed(seed)
    work = torch.float64
    mass_fraction = PLUMMER_MASS_CUT * torch.rand(B, n, generator=generator, dtype=work)
    radius = (mass_fraction ** (-2.0 / 3.0) - 1).rsqrt()  # mass fraction 0 gives radius 0
    position = radius[..., None] * _unit_vectors((B, n), generator, work)
    q = _plummer_speed_fractions(B * n, generator, work).reshape(B, n)
    speed = q * math.sqrt(2.0) * (1 + radius**2) ** -0.25
    velocity = speed[..., None] * _unit_vectors((B, n), generator, work)
    position, velocity = position[..., :dim].contiguous(), velocity[..., :dim].contiguous()

    mass = torch.full((B, n), 1.0 / n, dtype=work)
    state = to_center_of_mass_frame(NBodyState.from_arrays(mass, position, velocity, G=1.0, softening=softening, dtype=work))

    iu = torch.triu_indices(n, n, offset=1)
    diff = state.position[:, iu[0]] - state.position[:, iu[1]]  # (B, P, D)
    pair_mm = mass[:, iu[0]] * mass[:, iu[1]]
    scale_x = _potential_scale(diff.square().sum(-1), pair_mm, softening, target=0.5)
    scale_v = (0.25 / kinetic_energy(state.mass, state.velocity)).sqrt()
    state = state.replace(
        position=state.position * scale_x[:, None, None], velocity=state.velocity * scale_v[:, None, None]
    )
    return state.to(dtype=dtype).validate(where)


__all__ = [
    "FIGURE_EIGHT_PERIOD", "PLUMMER_MASS_CUT", "figure_eight", "kepler", "kepler_batch", "kepler_period", "plummer",
    "pythagorean",
]
