"""Families of gravitating systems with randomised parameters, for training sets and tests.

A *family* draws ``count`` systems whose parameters are sampled from ranges, with a
``torch.Generator`` so a seed gives the same systems. Every family returns a list of
:class:`SystemDraw` (one per system: masses (N,), positions and velocities (N, 3) in the
centre-of-mass frame, G = 1), since systems of one family may differ in N. Two-dimensional
systems lie in the z = 0 plane (every learned feature is rotation invariant, so a planar system
embedded in 3-D is the same system); ``dim = 3`` systems get a random orientation.

Parameters are either a number (fixed) or a two-element range ``[low, high]``. Ranges of
scales (semi-major axes, masses, mass ratios) are sampled log-uniformly, the others uniformly
(:class:`Sampler` and the orbit and rotation helpers are in :mod:`nbtoolkit.family_sampling`).

Families (:data:`FAMILIES`):

* ``kepler``: bound two-body orbits: ``eccentricity``, ``mass_ratio`` m2/m1, ``semi_major_axis``,
  ``total_mass``, ``mean_anomaly`` (in turns: 0 = pericentre, 0.5 = apocentre), ``dim``.
  ``log_one_minus_e = 1`` draws 1 - e log-uniformly within the eccentricity range instead of e
  uniformly, so that e = 0.9, 0.99 and 0.999 are as common as e = 0 and 0.5 are.
* ``hyperbolic``: two bodies passing each other on an unbound orbit: ``eccentricity`` (> 1; e - 1 is
  drawn log-uniformly, so near-parabolic passages are as common as fast ones), ``pericentre`` distance,
  ``mass_ratio`` m2/m1, ``total_mass``, starting ``distance`` pericentre distances apart on the way in,
  ``dim``. Training restarts such a pair once it has flown apart
  (:mod:`nbtoolkit.training.restart`), so it passes again and again.
* ``planets``: a star (mass ``total_mass``) with ``planets`` bodies of mass ``mass_ratio`` times
  the star's on orbits with ``eccentricity``, spaced by ``spacing`` in semi-major axis.
* ``triple``: hierarchical triples: an inner binary (``inner_eccentricity``, ``inner_mass_ratio``)
  and a third body (``outer_mass_ratio`` of the binary's mass) on an outer orbit
  (``outer_eccentricity``, ``period_ratio`` as the semi-major axis ratio), kept above the
  Mardling & Aarseth (2001) stability limit; ``dim = 3`` adds a random mutual inclination.
* ``figure-eight``: the Chenciner–Montgomery choreography with positions, velocities and
  masses perturbed by relative amounts up to ``perturbation``, at a random scale.
* ``democratic``: three comparable masses (``mass_ratio`` range between lightest and
  heaviest) placed at random in a unit disc or ball with virial ratio ``virial_ratio``
  (T/|U|; 0 starts at rest like Burrau's problem).
* ``central``: rotating central configurations: ``n`` bodies on a regular polygon (``n = 3``:
  Lagrange's equilateral triangle, whose masses are each log-uniform in [``mass_ratio``, 1]; larger
  rings have equal masses), around a central body of ``central_mass`` times the ring's mass (0: none),
  each moving at ``spin`` times the speed of the rigid rotation (1: the configuration turns rigidly;
  below 1 every body starts at the far end of an elliptic homographic orbit), with positions and
  velocities perturbed by relative amounts up to ``perturbation`` (an unstable configuration, such as
  Lagrange's with comparable masses, then breaks up), at a random scale.
* ``restricted``: light bodies around and across a binary, the restricted problems of celestial
  mechanics (Trojans, the Sitnikov problem, comets and circumbinary debris): a binary
  (``eccentricity``, ``mass_ratio``, semi-major axis 1) and ``particles`` bodies of
  ``particle_mass`` times the binary's mass each, every one at ``radius`` (in units of the binary's
  semi-major axis) from the binary's centre of mass in a random direction, moving at ``speed`` times
  the circular speed about the binary's mass there, in a random direction up to 45 degrees off the
  tangential (3-D: any azimuth about the radius; 2-D: prograde or retrograde), at a random scale.
  Inside a few semi-major axes such orbits are chaotic: a light body crosses the binary, is flung
  out or captured, so the closest pair is often one whose error weighs nothing in the system's energy.
* ``plummer``: Plummer spheres of ``n`` bodies (Hénon units, then scaled by ``scale``), via
  :func:`nbtoolkit.presets.plummer`. Equal masses by default; with ``mass_ratio`` q < 1 each
  mass is log-uniform in [q, 1] (a new q per cluster), and the velocities are rescaled to the
  virial ratio T / |U| = ``virial_ratio`` (0.5 equilibrium, near 0 a cold collapse).
* ``encounter``: a binary (``binary_eccentricity``, ``binary_mass_ratio``, semi-major axis 1)
  and an intruder (``intruder_mass_ratio`` of the binary's mass) coming in on a hyperbolic
  path: it starts ``distance`` from the binary's centre of mass, offset sideways by
  ``impact_parameter``, with the speed that gives ``speed`` at infinity (both in units of the
  binary's semi-major axis and circular speed), at a random scale. With ``intruder_separation``
  > 0 the intruder is itself a binary (its semi-major axis in units of the first binary's, its
  eccentricity and mass ratio drawn from the same ranges as the first's, its plane at random in
  3-D), so that two binaries meet; 0 (the default) draws a single intruder and leaves the
  generator's stream as it was.

Every family also takes ``softening`` (default 0): the Plummer softening length of each system,
in the system's length unit, drawn log-uniformly per system from a range ``[low, high]``
(``low > 0``; a number gives every system that softening). Drawing it uses the generator only
when it is given, so the systems drawn without it stay the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError
from .family_sampling import (  # noqa: F401  (LOG_PARAMS re-exported: the sampling helpers used to live here)
    LOG_PARAMS,
    Sampler,
    _orient,
    _to_com,
    hyperbolic_relative,
    kepler_relative,
    planar_rotation,
    random_rotation,
)
from .physics import accelerations, kinetic_energy, potential_energy


@dataclass(frozen=True)
class SystemDraw:
    """One drawn system: mass (N,), position (N, 3), velocity (N, 3), float64, G = 1, CoM frame, and
    its Plummer ``softening`` length (in the same length unit as ``position``)."""

    family: str
    mass: Tensor
    position: Tensor
    velocity: Tensor
    softening: float = 0.0

    @property
    def n_bodies(self) -> int:
        return int(self.mass.shape[0])


def _finish(family: str, mass: Tensor, position: Tensor, velocity: Tensor, dim: int,
            generator: torch.Generator) -> SystemDraw:
    position, velocity = _to_com(mass, position, velocity)
    position, velocity = _orient(position, velocity, dim, generator)
    return SystemDraw(family, mass.clone(), position.contiguous(), velocity.contiguous())


# ----------------------------------------------------------------------------- families
def _pairs(family: str, total: Tensor, q: Tensor, rel_x: Tensor, rel_v: Tensor, dims: Tensor,
           generator: torch.Generator) -> list[SystemDraw]:
    """Two-body systems of total mass ``total`` (B,) and mass ratio ``q`` = m2 / m1 (B,) from their relative
    positions and velocities (B, 3), each body placed about the centre of mass."""
    out = []
    for b in range(total.shape[0]):
        m1, m2 = total[b] / (1 + q[b]), total[b] * q[b] / (1 + q[b])
        frac = torch.stack([-m2, m1]).unsqueeze(-1) / total[b]
        out.append(_finish(family, torch.stack([m1, m2]), frac * rel_x[b], frac * rel_v[b], int(dims[b]), generator))
    return out


def _kepler(s: Sampler, count: int) -> list[SystemDraw]:
    e = s.draw("eccentricity", count)
    if s.params["log_one_minus_e"]:
        if s.bounds("eccentricity")[1] >= 1:
            raise ConfigError("family 'kepler': eccentricity must stay below 1 for bound orbits")
        e = s.draw_from_one("eccentricity", count)
    q = s.draw("mass_ratio", count)
    a = s.draw("semi_major_axis", count)
    total = s.draw("total_mass", count)
    mean_anomaly = 2 * math.pi * s.draw("mean_anomaly", count)
    dims = s.dims(count)
    rel_x, rel_v = kepler_relative(a, e, total, mean_anomaly)
    return _pairs("kepler", total, q, rel_x, rel_v, dims, s.generator)


def _hyperbolic(s: Sampler, count: int) -> list[SystemDraw]:
    lo = s.bounds("eccentricity")[0]
    if lo <= 1:
        raise ConfigError(f"family 'hyperbolic': eccentricity must be above 1 for unbound orbits; got {lo:g}")
    e = s.draw_from_one("eccentricity", count)
    q = s.draw("mass_ratio", count)
    pericentre = s.draw("pericentre", count)
    total = s.draw("total_mass", count)
    distance = s.draw("distance", count)
    if float(distance.min()) < 1:
        raise ConfigError("family 'hyperbolic': distance (in pericentre distances) must be >= 1; "
                          f"got {float(distance.min()):g}")
    dims = s.dims(count)
    rel_x, rel_v, _ = hyperbolic_relative(pericentre, e, total, distance * pericentre)
    return _pairs("hyperbolic", total, q, rel_x, rel_v, dims, s.generator)


def _planets(s: Sampler, count: int) -> list[SystemDraw]:
    out = []
    for k in s.draw_int("planets", count).tolist():
        star = s.draw("total_mass", 1)
        q = s.draw("mass_ratio", k)
        spacing = s.draw("spacing", k)
        a = s.draw("semi_major_axis", 1) * torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64), spacing[1:]]), 0)
        e = s.draw("eccentricity", k)
        anomaly = 2 * math.pi * torch.rand(k, generator=s.generator, dtype=torch.float64)
        mass = torch.cat([star, star * q])
        rel_x, rel_v = kepler_relative(a, e, star * (1 + q), anomaly)
        dim = int(s.dims(1)[0])
        if dim == 3:  # small mutual inclinations, as in planetary systems
            for p in range(k):
                tilt = 0.1 * float(torch.randn((), generator=s.generator, dtype=torch.float64))
                c, si = math.cos(tilt), math.sin(tilt)
                rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -si], [0.0, si, c]], dtype=torch.float64)
                turn = planar_rotation(s.generator)
                rel_x[p], rel_v[p] = turn @ (rot @ rel_x[p]), turn @ (rot @ rel_v[p])
        zero = torch.zeros(1, 3, dtype=torch.float64)
        out.append(_finish("planets", mass, torch.cat([zero, rel_x]), torch.cat([zero, rel_v]), dim, s.generator))
    return out


def _mardling_aarseth(q_out: float, e_out: float) -> float:
    """Smallest stable a_out / a_in (Mardling & Aarseth 2001, coplanar prograde)."""
    return 2.8 * (1 + q_out) ** 0.4 * (1 + e_out) ** 0.4 / (1 - e_out) ** 1.2


def _binary_and_third(m1: Tensor, m2: Tensor, m3: Tensor, x_in: Tensor, v_in: Tensor, x_out: Tensor,
                      v_out: Tensor) -> tuple[Tensor, Tensor]:
    """Positions and velocities (3, 3) of a binary (m1, m2; relative orbit x_in, v_in, each (1, 3)) and a
    third body m3 at x_out, v_out (1, 3) from the binary's centre of mass, in the centre-of-mass frame."""
    # inner binary about its centre of mass, which sits at -m3/(1+m3) x_out; body 3 at x_out/(1+m3)
    inner_frac = torch.stack([-m2, m1, torch.zeros_like(m1)]).unsqueeze(-1)
    outer_frac = torch.stack([-m3, -m3, torch.ones_like(m3)]).unsqueeze(-1) / (1 + m3)
    return inner_frac * x_in + outer_frac * x_out, inner_frac * v_in + outer_frac * v_out


def _triple(s: Sampler, count: int) -> list[SystemDraw]:
    e_in, q_in = s.draw("inner_eccentricity", count), s.draw("inner_mass_ratio", count)
    e_out, q_out = s.draw("outer_eccentricity", count), s.draw("outer_mass_ratio", count)
    ratio, scale = s.draw("period_ratio", count), s.draw("scale", count)
    dims = s.dims(count)
    out = []
    for b in range(count):
        m1, m2 = 1 / (1 + q_in[b]), q_in[b] / (1 + q_in[b])
        m3 = q_out[b]
        a_out = max(float(ratio[b]), 1.2 * _mardling_aarseth(float(q_out[b]), float(e_out[b])))
        anomalies = 2 * math.pi * torch.rand(2, generator=s.generator, dtype=torch.float64)
        one = torch.ones(1, dtype=torch.float64)
        xi, vi = kepler_relative(one, e_in[b:b + 1], one, anomalies[:1])
        xo, vo = kepler_relative(a_out * one, e_out[b:b + 1], (1 + m3) * one, anomalies[1:])
        if int(dims[b]) == 3:
            rot = random_rotation(s.generator)
            xi, vi = xi @ rot.T, vi @ rot.T
        pos, vel = _binary_and_third(m1, m2, m3, xi, vi, xo, vo)
        sc = float(scale[b])
        out.append(_finish("triple", torch.stack([m1, m2, m3]), pos * sc, vel / math.sqrt(sc), int(dims[b]),
                           s.generator))
    return out


def _jitter(x: Tensor, amplitude: float, generator: torch.Generator) -> Tensor:
    """``x`` with each element times 1 + u, u uniform in [-amplitude, amplitude]."""
    return x * (1 + amplitude * (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1))


def _figure_eight(s: Sampler, count: int) -> list[SystemDraw]:
    from .presets import figure_eight

    base = figure_eight()
    amp, scale = s.draw("perturbation", count), s.draw("scale", count)
    out = []
    for b in range(count):
        a = float(amp[b])
        mass = _jitter(base.mass[0], a, s.generator)
        pos = torch.cat([_jitter(base.position[0], a, s.generator), torch.zeros(3, 1, dtype=torch.float64)], -1)
        vel = torch.cat([_jitter(base.velocity[0], a, s.generator), torch.zeros(3, 1, dtype=torch.float64)], -1)
        sc = float(scale[b])
        out.append(_finish("figure-eight", mass, pos * sc, vel / math.sqrt(sc), 2, s.generator))
    return out


def _democratic(s: Sampler, count: int) -> list[SystemDraw]:
    out = []
    q, virial, dims = s.draw("mass_ratio", count), s.draw("virial_ratio", count), s.dims(count)
    for b in range(count):
        dim = int(dims[b])
        for _ in range(100):  # redraw until no two bodies start closer than 0.2 (of a unit disc or ball)
            pos = 2 * torch.rand(3, 3, generator=s.generator, dtype=torch.float64) - 1
            if dim == 2:
                pos[:, 2] = 0
            dist = torch.pdist(pos)
            if float(dist.min()) > 0.2 and float(pos.norm(dim=-1).max()) <= 1:
                break
        mass = torch.exp(math.log(float(q[b])) * torch.rand(3, generator=s.generator, dtype=torch.float64))
        mass = mass / mass.sum()
        vel = torch.randn(3, 3, generator=s.generator, dtype=torch.float64)
        if dim == 2:
            vel[:, 2] = 0
        pos, vel = _to_com(mass, pos, vel)
        T, U = kinetic_energy(mass, vel), potential_energy(mass, pos)
        vel = vel * torch.sqrt(virial[b] * U.abs() / T)
        scale = s.draw("scale", 1)
        out.append(_finish("democratic", mass, pos * scale, vel / scale.sqrt(), dim, s.generator))
    return out


def _central(s: Sampler, count: int) -> list[SystemDraw]:
    n_ring, q, spin = s.draw_int("n", count), s.draw("mass_ratio", count), s.draw("spin", count)
    central = s.draw("central_mass", count) if s.bounds("central_mass")[1] > 0 else torch.zeros(count, dtype=torch.float64)
    amp, scale, dims = s.draw("perturbation", count), s.draw("scale", count), s.dims(count)
    out = []
    for b in range(count):
        n = int(n_ring[b])
        if n < 3:
            raise ConfigError(f"family 'central': parameter n must be at least 3 (a triangle); got {s.params['n']!r}")
        if n == 3 and float(central[b]) == 0:  # Lagrange's triangle is central for any masses
            ring = torch.exp(math.log(float(q[b])) * torch.rand(3, generator=s.generator, dtype=torch.float64))
        else:  # a ring is central only with equal masses
            ring = torch.ones(n, dtype=torch.float64)
        ring = ring / ring.sum()
        angle = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
        pos = torch.stack([angle.cos(), angle.sin(), torch.zeros(n, dtype=torch.float64)], -1)
        mass = ring
        if float(central[b]) > 0:
            mass, pos = torch.cat([central[b:b + 1], ring]), torch.cat([torch.zeros(1, 3, dtype=torch.float64), pos])
        pos = pos - (mass.unsqueeze(-1) * pos).sum(0) / mass.sum()
        # every body of a central configuration accelerates towards the centre of mass as -omega^2 r
        acc = accelerations(mass.unsqueeze(0), pos.unsqueeze(0))[0]
        moving = pos.norm(dim=-1) > 1e-12
        omega = (-(acc * pos).sum(-1)[moving] / pos.square().sum(-1)[moving]).mean().sqrt()
        vel = float(spin[b]) * omega * torch.stack([-pos[:, 1], pos[:, 0], torch.zeros_like(pos[:, 0])], -1)
        pos, vel = _jitter(pos, float(amp[b]), s.generator), _jitter(vel, float(amp[b]), s.generator)
        sc = float(scale[b])
        out.append(_finish("central", mass, pos * sc, vel / math.sqrt(sc), int(dims[b]), s.generator))
    return out


def _restricted(s: Sampler, count: int) -> list[SystemDraw]:
    e, q, scale, dims = s.draw("eccentricity", count), s.draw("mass_ratio", count), s.draw("scale", count), s.dims(count)
    out = []
    for b, k in enumerate(s.draw_int("particles", count).tolist()):
        one = torch.ones(1, dtype=torch.float64)
        anomaly = 2 * math.pi * torch.rand(1, generator=s.generator, dtype=torch.float64)
        xi, vi = kepler_relative(one, e[b:b + 1], one, anomaly)
        m1, m2 = 1 / (1 + q[b]), q[b] / (1 + q[b])
        dim = int(dims[b])
        light, radius, speed = s.draw("particle_mass", k), s.draw("radius", k), s.draw("speed", k)
        offset = (torch.rand(k, generator=s.generator, dtype=torch.float64) - 0.5) * (math.pi / 2)
        direction = torch.randn(k, 3, generator=s.generator, dtype=torch.float64)
        pole = torch.randn(k, 3, generator=s.generator, dtype=torch.float64)  # 3-D: any azimuth about the radius
        if dim == 2:  # in the binary's plane, prograde or retrograde
            direction[:, 2] = 0
            sense = torch.where(torch.rand(k, 1, generator=s.generator) < 0.5, -1.0, 1.0).to(torch.float64)
            pole = sense * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        radial = direction / direction.norm(dim=-1, keepdim=True)
        tangential = torch.linalg.cross(pole, radial)
        tangential = tangential / tangential.norm(dim=-1, keepdim=True)
        heading = offset.cos().unsqueeze(-1) * tangential + offset.sin().unsqueeze(-1) * radial
        pos = torch.cat([torch.stack([-m2 * xi[0], m1 * xi[0]]), radius.unsqueeze(-1) * radial])
        vel = torch.cat([torch.stack([-m2 * vi[0], m1 * vi[0]]),
                         (speed / radius.sqrt()).unsqueeze(-1) * heading])
        mass = torch.cat([torch.stack([m1, m2]), light])
        sc = float(scale[b])
        out.append(_finish("restricted", mass, pos * sc, vel / math.sqrt(sc), dim, s.generator))
    return out


def _plummer(s: Sampler, count: int) -> list[SystemDraw]:
    from .presets import plummer

    out = []
    equal_masses = s.bounds("mass_ratio") == (1.0, 1.0)
    for n in s.draw_int("n", count).tolist():
        seed = int(torch.randint(0, 2**31 - 1, (), generator=s.generator))
        state = plummer(n=max(n, 2), seed=seed, dim=3)
        scale = float(s.draw("scale", 1))
        mass, pos, vel = state.mass[0].clone(), state.position[0] * scale, state.velocity[0] / math.sqrt(scale)
        if not equal_masses or s.bounds("virial_ratio") != (0.5, 0.5):
            if not equal_masses:  # each mass log-uniform in [q, 1] x m_max, a new q per cluster
                q = float(s.draw("mass_ratio", 1))
                mass = torch.exp(math.log(q) * torch.rand(mass.shape[0], generator=s.generator, dtype=torch.float64))
                mass = mass / mass.sum()
                pos, vel = _to_com(mass, pos, vel)
            T, U = kinetic_energy(mass, vel), potential_energy(mass, pos)
            vel = vel * torch.sqrt(s.draw("virial_ratio", 1) * U.abs() / T)
        out.append(SystemDraw("plummer", mass, pos, vel))
    return out


def _intruder_pair(s: Sampler, m3: Tensor, separation: float, dim: int, pos: Tensor,
                   vel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split the third body (mass m3, row 2 of pos and vel (3, 3)) into a bound pair with semi-major
    axis ``separation``: masses (4,), positions and velocities (4, 3)."""
    e, q = s.draw("binary_eccentricity", 1), s.draw("binary_mass_ratio", 1)
    anomaly = 2 * math.pi * torch.rand(1, generator=s.generator, dtype=torch.float64)
    xb, vb = kepler_relative(separation * torch.ones(1, dtype=torch.float64), e, m3.reshape(1), anomaly)
    rot = random_rotation(s.generator) if dim == 3 else planar_rotation(s.generator)
    xb, vb = xb @ rot.T, vb @ rot.T
    ma, mb = m3 / (1 + q[0]), m3 * q[0] / (1 + q[0])
    split = torch.stack([-mb, ma]).unsqueeze(-1) / m3  # (2, 1): each member's offset from the pair's centre
    return (torch.stack([ma, mb]),
            torch.cat([pos[:2], pos[2:] + split * xb]), torch.cat([vel[:2], vel[2:] + split * vb]))


def _encounter(s: Sampler, count: int) -> list[SystemDraw]:
    e, q = s.draw("binary_eccentricity", count), s.draw("binary_mass_ratio", count)
    q_in, impact = s.draw("intruder_mass_ratio", count), s.draw("impact_parameter", count)
    speed, distance, scale = s.draw("speed", count), s.draw("distance", count), s.draw("scale", count)
    dims = s.dims(count)
    pair = s.bounds("intruder_separation")[1] > 0
    separation = s.draw("intruder_separation", count) if pair else None
    out = []
    for b in range(count):
        one = torch.ones(1, dtype=torch.float64)
        anomaly = 2 * math.pi * torch.rand(1, generator=s.generator, dtype=torch.float64)
        xi, vi = kepler_relative(one, e[b:b + 1], one, anomaly)
        if int(dims[b]) == 3:  # the binary's plane at random to the intruder's path
            rot = random_rotation(s.generator)
            xi, vi = xi @ rot.T, vi @ rot.T
        m1, m2, m3 = 1 / (1 + q[b]), q[b] / (1 + q[b]), q_in[b]
        d = float(distance[b])
        offset = torch.tensor([[-d, float(impact[b]), 0.0]], dtype=torch.float64)
        v_start = math.sqrt(float(speed[b]) ** 2 + 2 * (1 + float(m3)) / float(offset.norm()))
        approach = torch.tensor([[v_start, 0.0, 0.0]], dtype=torch.float64)
        pos, vel = _binary_and_third(m1, m2, m3, xi, vi, offset, approach)
        mass = torch.stack([m1, m2, m3])
        if separation is not None:
            pair_mass, pos, vel = _intruder_pair(s, m3, float(separation[b]), int(dims[b]), pos, vel)
            mass = torch.cat([mass[:2], pair_mass])
        sc = float(scale[b])
        out.append(_finish("encounter", mass, pos * sc, vel / math.sqrt(sc), int(dims[b]), s.generator))
    return out


@dataclass(frozen=True)
class Family:
    """A named family: ``build(sampler, count)`` and the default of every parameter."""

    name: str
    build: Callable[[Sampler, int], list[SystemDraw]]
    defaults: dict[str, Any]
    description: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("kepler", _kepler, {"eccentricity": [0.0, 0.99], "mass_ratio": [1e-3, 1.0], "semi_major_axis": [0.1, 10.0],
                               "total_mass": [0.1, 10.0], "mean_anomaly": [0.0, 1.0], "dim": [2, 3],
                               "log_one_minus_e": 0},
           "bound two-body orbits"),
    Family("hyperbolic", _hyperbolic, {"eccentricity": [1.02, 10.0], "pericentre": [0.01, 1.0],
                                       "mass_ratio": [1e-3, 1.0], "total_mass": [0.1, 10.0], "distance": [10.0, 100.0],
                                       "dim": [2, 3]},
           "two bodies passing each other on an unbound orbit, from afar"),
    Family("planets", _planets, {"planets": [2, 4], "mass_ratio": [1e-4, 1e-2], "eccentricity": [0.0, 0.3],
                                 "spacing": [1.5, 3.0], "semi_major_axis": [0.5, 2.0], "total_mass": [0.5, 2.0],
                                 "dim": [2, 3]},
           "a star with planets on near-coplanar orbits"),
    Family("triple", _triple, {"inner_eccentricity": [0.0, 0.9], "inner_mass_ratio": [0.01, 1.0],
                               "outer_eccentricity": [0.0, 0.6], "outer_mass_ratio": [1e-3, 2.0],
                               "period_ratio": [3.0, 30.0], "scale": [0.1, 10.0], "dim": [2, 3]},
           "hierarchical triples above the Mardling-Aarseth stability limit"),
    Family("figure-eight", _figure_eight, {"perturbation": [0.0, 0.03], "scale": [0.3, 3.0]},
           "perturbed figure-eight choreographies"),
    Family("democratic", _democratic, {"mass_ratio": [0.2, 1.0], "virial_ratio": [0.0, 0.6], "scale": [0.3, 3.0],
                                       "dim": [2, 3]},
           "three comparable masses at random, from rest to virialised"),
    Family("central", _central, {"n": [3, 3], "mass_ratio": [0.01, 1.0], "central_mass": 0.0, "spin": [0.9, 1.0],
                                 "perturbation": [0.0, 0.02], "scale": [0.3, 3.0], "dim": [2, 3]},
           "rotating central configurations: Lagrange's triangle and regular rings, around a central body or not"),
    Family("restricted", _restricted, {"eccentricity": [0.0, 0.7], "mass_ratio": [1e-3, 1.0], "particles": [1, 3],
                                       "particle_mass": [1e-9, 1e-4], "radius": [0.3, 4.0], "speed": [0.5, 1.2],
                                       "scale": [0.3, 3.0], "dim": [2, 3]},
           "light bodies around and across a binary (restricted problems: Trojans, Sitnikov, comets)"),
    Family("plummer", _plummer, {"n": [4, 64], "scale": [0.3, 3.0], "mass_ratio": 1.0, "virial_ratio": 0.5},
           "Plummer spheres of n bodies: equal masses, or each log-uniform down to mass_ratio x the largest; "
           "velocities scaled to the virial ratio T / |U| (0.5 is equilibrium, below it collapses)"),
    Family("encounter", _encounter, {"binary_eccentricity": [0.0, 0.9], "binary_mass_ratio": [0.1, 1.0],
                                     "intruder_mass_ratio": [0.1, 1.0], "impact_parameter": [0.5, 4.0],
                                     "speed": [0.3, 2.0], "distance": 8.0, "scale": [0.3, 3.0], "dim": [2, 3],
                                     "intruder_separation": 0.0},
           "a binary and an intruder (a single body, or a binary with intruder_separation > 0) on a hyperbolic "
           "approach"),
)}


#: parameters every family takes, with their defaults (see the module docstring)
COMMON_DEFAULTS: dict[str, Any] = {"softening": 0.0}


def check_family(name: Any, count: Any, params: dict[str, Any]) -> Family:
    """The family ``name`` if ``count`` and the names of ``params`` suit it; else a :class:`ConfigError`
    naming what is wrong (parameter values are checked when drawing)."""
    family = FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}; got {name!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be an integer >= 1; got {count!r}")
    unknown = sorted(set(params) - set(family.defaults) - set(COMMON_DEFAULTS))
    if unknown:
        takes = sorted(set(family.defaults) | set(COMMON_DEFAULTS))
        raise ConfigError(f"family '{name}' does not take '{unknown[0]}'; it takes: {', '.join(takes)}")
    return family


def draw_family(name: str, count: int, generator: torch.Generator, **params: Any) -> list[SystemDraw]:
    """``count`` systems of family ``name`` with ``params`` overriding its defaults."""
    family = check_family(name, count, params)
    common = {key: params.pop(key) for key in COMMON_DEFAULTS if key in params}
    softening = Sampler(name, common, COMMON_DEFAULTS, generator)  # checks: 0, or > 0 throughout
    low, high = softening.bounds("softening")
    draws = family.build(Sampler(name, params, family.defaults, generator), count)
    if high == 0:
        return draws
    eps = softening.draw("softening", count) if low < high else torch.full((count,), low, dtype=torch.float64)
    return [dataclasses.replace(d, softening=float(e)) for d, e in zip(draws, eps)]
