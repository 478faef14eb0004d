"""The integrator contract that plugins implement.

An integrator advances every system of a batched :class:`~nbtoolkit.state.NBodyState` by its
own timestep ``dt`` (shape (B,), > 0) and returns a new state whose ``time`` is ``time + dt``.
It must not modify its input, must be differentiable with respect to ``dt`` and the state,
and declares its convergence ``order`` and ``force_evals_per_step`` (force evaluations per step
in steady state, i.e. counting a reused acceleration cache as free).

An integrator that takes every acceleration from :func:`nbtoolkit.physics.accelerations_at` (at
each stage's positions and time) or :func:`nbtoolkit.physics.state_accelerations` sees an external
field at full order and declares ``field_aware = True``; nbtoolkit steps any other integrator
through a splitting around the field (:func:`nbtoolkit.field.advance`), so it works unchanged.
"""

from __future__ import annotations

import abc

from torch import Tensor

from .state import NBodyState


class Integrator(abc.ABC):
    """Base class of integrator plugins. Subclasses set the class attributes and :meth:`step`."""

    #: global order of accuracy p: the error after a fixed time span scales as dt**p
    order: int = 0
    #: force (acceleration) evaluations per step in steady state
    force_evals_per_step: int = 1
    #: whether the map is symplectic at fixed dt
    symplectic: bool = False
    #: whether step() evaluates forces with accelerations_at / state_accelerations, so that an
    #: external field on the state is part of every stage (else nbtoolkit splits the step around it)
    field_aware: bool = False

    @abc.abstractmethod
    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        """Advance ``state`` by ``dt`` (B,) and return the new state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, force_evals_per_step={self.force_evals_per_step})"
