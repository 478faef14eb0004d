"""Default integrator plugins: ``leapfrog`` (2nd order), ``yoshida4`` (4th order), ``rk4`` (4th order).

All advance every system of a batch by its own dt (B,), keep the graph to dt and the state
(so a learned dt can be trained through the step), and never modify their input. They take
every acceleration from :func:`~nbtoolkit.physics.accelerations_at` at the stage's positions and
time, so an external field on the state is integrated at their full order (``field_aware``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.integrator import Integrator
from nbtoolkit.physics import accelerations_at, state_accelerations
from nbtoolkit.shadow import kdk_error_coefficient, kdk_error_coefficients
from nbtoolkit.state import NBodyState


def _kdk(state: NBodyState, dt: Tensor) -> NBodyState:
    """One kick-drift-kick velocity-Verlet step; returns the state with the new acceleration cached."""
    h = dt[:, None, None]
    v_half = torch.addcmul(state.velocity, h, state_accelerations(state), value=0.5)
    position = torch.addcmul(state.position, h, v_half)
    time = state.time + dt
    acc = accelerations_at(state, position, time)
    velocity = torch.addcmul(v_half, h, acc, value=0.5)
    return state.replace(position=position, velocity=velocity, time=time, acceleration=acc)


class Leapfrog(Integrator):
    """Kick-drift-kick leapfrog (velocity Verlet): symplectic and time-reversible at fixed dt.

    Reuses the acceleration cached on the incoming state, so one force evaluation per step.
    """

    order = 2
    force_evals_per_step = 1
    symplectic = True
    field_aware = True

    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        return _kdk(state, dt)

    def energy_error_coefficient(self, state: NBodyState, dt: Tensor) -> Tensor | None:
        """The mean of |dH2/dt| over the step (or its value at the middle, where that is larger) over |E|, from the
        h^2 term of the modified Hamiltonian (:func:`nbtoolkit.shadow.kdk_error_coefficient`); None with an external
        field, whose Hessian it leaves out."""
        return None if state.field is not None else kdk_error_coefficient(state, dt)

    def energy_error_coefficients(self, state: NBodyState, dt: Tensor, doublings: int) -> Tensor | None:
        """:meth:`energy_error_coefficient` over steps of dt, 2 dt, ..., 2^doublings dt (doublings + 1, B), the steps
        sharing the points where dH2/dt is computed (:func:`nbtoolkit.shadow.kdk_error_coefficients`: doublings + 3
        of them instead of 3 per step)."""
        return None if state.field is not None else kdk_error_coefficients(state, dt, doublings)


class Yoshida4(Integrator):
    """Yoshida's (1990) 4th-order symplectic composition of three leapfrog steps.

    Sub-steps w1 dt, w0 dt, w1 dt with w1 = 1 / (2 - 2^(1/3)), w0 = -2^(1/3) w1; three force
    evaluations per step (the first kick reuses the cached acceleration).
    """

    order = 4
    force_evals_per_step = 3
    symplectic = True
    field_aware = True
    W1 = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
    W0 = -(2.0 ** (1.0 / 3.0)) * W1

    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        start_time = state.time
        for w in (self.W1, self.W0, self.W1):
            state = _kdk(state, w * dt)
        return state.replace(time=start_time + dt)  # avoid round-off drift in the clock


class RK4(Integrator):
    """Classical 4th-order Runge–Kutta on (x, v): not symplectic, four force evaluations per step."""

    order = 4
    force_evals_per_step = 4
    symplectic = False
    field_aware = True

    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        h = dt[:, None, None]
        x, v, t_mid, t_end = state.position, state.velocity, state.time + 0.5 * dt, state.time + dt
        a1 = state_accelerations(state)
        x2, v2 = x + 0.5 * h * v, v + 0.5 * h * a1
        a2 = accelerations_at(state, x2, t_mid)
        x3, v3 = x + 0.5 * h * v2, v + 0.5 * h * a2
        a3 = accelerations_at(state, x3, t_mid)
        x4, v4 = x + h * v3, v + h * a3
        a4 = accelerations_at(state, x4, t_end)
        position = x + h / 6 * (v + 2 * v2 + 2 * v3 + v4)
        velocity = v + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        return state.replace(position=position, velocity=velocity, time=t_end)


@hookimpl
def nbtoolkit_register_integrators(register) -> None:
    register("leapfrog", Leapfrog)
    register("yoshida4", Yoshida4)
    register("rk4", RK4)
