"""Default external-field plugins: ``plummer-host`` (a static galaxy) and ``point-mass-host`` (tides).

Both use the state's ``G`` and units; positions are in the frame the field documents.

``plummer-host`` is the potential of a Plummer sphere of mass M and scale radius a centred at the
origin, static:

    Phi(x) = -G M / sqrt(|x|^2 + a^2),     a(x) = -G M x / (|x|^2 + a^2)^(3/2).

A body on a circular orbit of radius r has the speed v_c = sqrt(G M r^2 / (r^2 + a^2)^(3/2)) and
the period 2 pi sqrt((r^2 + a^2)^(3/2) / (G M)). The total energy T + U + sum_i m_i Phi(x_i) is
conserved.

``point-mass-host`` is the tidal field of a distant point-mass galaxy of mass M on a cluster whose
centre of mass moves on a circular orbit of radius R around it, in the cluster's frame: the frame
follows the orbit's guiding centre without rotating, so the host circles the origin at the angular
velocity Omega = sqrt(G M / R^3) (counter-clockwise in the x-y plane), at

    X(t) = -R (cos(Omega t + phase), sin(Omega t + phase)[, 0]),

and a body at x feels the host's attraction minus the frame's acceleration G M X / R^3:

    a(x, t) = -G M (x - X) / |x - X|^3 - G M X / R^3,
    Phi(x, t) = -G M / |x - X| + G M x . X / R^3 + G M / R      (0 at the origin).

The acceleration vanishes at the origin, where the cluster's centre of mass stays for a cluster of
mass << M, and to first order in |x| / R it is the usual tidal field (stretching along X,
compressing across it; the tidal radius is about R (m / 3M)^(1/3) for a cluster of mass m). The
cluster is treated in the restricted approximation: the host's orbit is fixed, the cluster does
not pull it. The potential rotates rigidly with the host, so the energy T + U + sum_i m_i Phi is not
conserved; the Jacobi-like energy

    E_J = T + U + sum_i m_i Phi(x_i, t) - Omega L_z,     L_z = sum_i m_i (x_i v_y,i - y_i v_x,i),

is (the frame term -Omega L_z is this field's :meth:`frame_energy`), and it is what the energy gate,
the training loss, ``simulate`` and ``evaluate`` compare.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.field import ExternalField
from nbtoolkit.options import Option, check_arguments, number
from nbtoolkit.state import NBodyState

#: the host's mass, in the state's units
HOST_MASS = Option("mass of the host, M", number(0.0))


class PlummerHost(ExternalField):
    """The static potential of a Plummer sphere of mass ``mass`` and scale radius ``radius`` (state
    units) centred at the origin."""

    def __init__(self, mass: Annotated[float, HOST_MASS] = 100.0,
                 radius: Annotated[float, Option("scale radius of the Plummer sphere, a", number(0.0))] = 10.0) -> None:
        checked = check_arguments(PlummerHost, mass=mass, radius=radius)
        self.mass, self.radius = checked["mass"], checked["radius"]
        self.label = f"Plummer host (M = {self.mass:g}, a = {self.radius:g}); conserves E"

    def _inverse_distance(self, position: Tensor) -> Tensor:
        """1 / sqrt(|x|^2 + a^2), (B, N)."""
        return (position.square().sum(-1) + self.radius**2).rsqrt()

    def accelerations(self, state: NBodyState) -> Tensor:
        s = self._inverse_distance(state.position)
        return -state.G * self.mass * state.position * (s * s * s).unsqueeze(-1)

    def potential_energy(self, state: NBodyState) -> Tensor:
        return -state.G * self.mass * (state.mass * self._inverse_distance(state.position)).sum(-1)

    def circular_period(self, r: float, G: float = 1.0) -> float:
        """The period of a circular orbit of radius ``r`` in this potential (units of the state)."""
        return 2 * math.pi * math.sqrt((r * r + self.radius**2) ** 1.5 / (G * self.mass))

    def __repr__(self) -> str:
        return f"PlummerHost(mass={self.mass:g}, radius={self.radius:g})"


class PointMassHost(ExternalField):
    """The tidal field of a point-mass host of mass ``mass`` at the distance ``distance`` on a
    circular orbit, in the frame of the cluster's guiding centre (see the module docstring);
    ``phase`` (radians) is the orbit's angle at time 0."""

    def __init__(self, mass: Annotated[float, HOST_MASS] = 1000.0,
                 distance: Annotated[float, Option("distance R from the host to the cluster's centre, the "
                                                   "radius of the circular orbit", number(0.0))] = 50.0,
                 phase: Annotated[float, Option("angle of the orbit at time 0 (radians)", number())] = 0.0) -> None:
        checked = check_arguments(PointMassHost, mass=mass, distance=distance, phase=phase)
        self.mass, self.distance, self.phase = checked["mass"], checked["distance"], checked["phase"]
        self.label = (f"point-mass host (M = {self.mass:g} at R = {self.distance:g}); "
                      "conserves the Jacobi energy E - Omega L_z")

    def angular_velocity(self, G: float) -> float:
        """Omega = sqrt(G M / R^3), the orbit's angular velocity (1 / time unit)."""
        return math.sqrt(G * self.mass / self.distance**3)

    def host_position(self, state: NBodyState) -> Tensor:
        """X(t), the host's position relative to the guiding centre, (B, 1, D)."""
        angle = self.angular_velocity(state.G) * state.time + self.phase  # (B,)
        planar = torch.stack([angle.cos(), angle.sin()], -1) * -self.distance  # (B, 2)
        extra = planar.new_zeros(state.batch_size, state.dim - 2)
        return torch.cat([planar, extra], -1).unsqueeze(1)

    def accelerations(self, state: NBodyState) -> Tensor:
        host = self.host_position(state)
        d = state.position - host
        inv = d.square().sum(-1, keepdim=True).rsqrt()
        gm = state.G * self.mass
        return -gm * d * inv * inv * inv - gm * host / self.distance**3

    def potential_energy(self, state: NBodyState) -> Tensor:
        host = self.host_position(state)
        d = state.position - host
        gm = state.G * self.mass
        phi = -gm * d.square().sum(-1).rsqrt() + gm * (state.position * host).sum(-1) / self.distance**3 \
            + gm / self.distance  # (B, N)
        return (state.mass * phi).sum(-1)

    def frame_energy(self, state: NBodyState) -> Tensor:
        x, y = state.position[..., 0], state.position[..., 1]
        vx, vy = state.velocity[..., 0], state.velocity[..., 1]
        lz = (state.mass * (x * vy - y * vx)).sum(-1)
        return -self.angular_velocity(state.G) * lz

    def __repr__(self) -> str:
        return f"PointMassHost(mass={self.mass:g}, distance={self.distance:g}, phase={self.phase:g})"


@hookimpl
def nbtoolkit_register_external_fields(register) -> None:
    register("plummer-host", PlummerHost)
    register("point-mass-host", PointMassHost)
