"""The integrator contract that plugins implement.

An integrator advances every system of a batched :class:`~nbtoolkit.state.NBodyState` by its
own timestep ``dt`` (shape (B,), > 0) and returns a new state whose ``time`` is ``time + dt``.
It must not modify its input, must be differentiable with respect to ``dt`` and the state,
and declares its convergence ``order`` and ``force_evals_per_step`` (force evaluations per step
in steady state, i.e. counting a reused acceleration cache as free).
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

    @abc.abstractmethod
    def step(self, state: NBodyState, dt: Tensor) -> NBodyState:
        """Advance ``state`` by ``dt`` (B,) and return the new state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order}, force_evals_per_step={self.force_evals_per_step})"
