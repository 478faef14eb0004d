"""The acceptance-gate contract that plugins implement, and the whole-system energy gate.

A gate judges one step: it maps the state a step started from and the state it reached to an
error per system, a tensor of shape (B,), dimensionless, >= 0 and +inf where the step blew up.
A step passes when its error is at most the threshold (``energy_threshold`` in training, the
guard threshold of ``simulate``, ``--threshold`` of ``evaluate``). Training learns dt against
the same error (the band loss of :mod:`nbtoolkit.training.steps`), so a gate must be
differentiable with respect to the state after the step.

The default, :class:`EnergyGate` (registered as ``energy``), is the seed's gate: the relative
change of the total energy of each system, |E1 - E0| / |E0|.
"""

from __future__ import annotations

import abc

from torch import Tensor

from .physics import relative_energy_error, state_energy
from .state import NBodyState


class Gate(abc.ABC):
    """Base class of gate plugins. Subclasses implement :meth:`error`, and may set :attr:`label`
    and :meth:`reference`."""

    #: what the error measures, for table headers, plot axes and messages
    label: str = "error"

    def reference(self, state: NBodyState) -> Tensor | None:
        """Quantities of ``state`` that :meth:`error` needs for any step starting from it, computed
        once, so that callers judging several steps from the same state (retries, a grid of trial
        dts) or carrying them from step to step do not recompute them.

        A tensor whose first dimension is the batch (B, ...) holding per-system values only (no
        per-body axis: callers index it by system and trim padding bodies off the states), or
        None (the default: nothing to reuse).
        """
        return None

    @abc.abstractmethod
    def error(self, before: NBodyState, after: NBodyState, reference: Tensor | None = None) -> Tensor:
        """The error of the step from ``before`` to ``after`` (same B, N, D), shape (B,).

        ``reference`` is ``self.reference(before)`` or None (then compute what is needed from
        ``before``). Dimensionless, >= 0, +inf where not finite (never NaN), and differentiable
        with respect to ``after``.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EnergyGate(Gate):
    """The whole-system energy gate: |E1 - E0| / |E0| of each system's total energy (the seed's).

    It sees every body only through the total: an error in the energy of a weakly bound member
    (a planet, the outer body of a triple) counts in proportion to that member's share of E.
    """

    label = "|dE/E|"

    def reference(self, state: NBodyState) -> Tensor:
        """E0 (B,), the total energy of each system (detached)."""
        return state_energy(state).detach()

    def error(self, before: NBodyState, after: NBodyState, reference: Tensor | None = None) -> Tensor:
        e0 = state_energy(before) if reference is None else reference
        return relative_energy_error(e0.detach(), state_energy(after))


def is_energy_gate(gate: Gate | None) -> bool:
    """Whether ``gate`` is the energy gate itself (None stands for it): its error is the |dE/E|
    that runs record for every step anyway, so callers take it from there."""
    return gate is None or type(gate) is EnergyGate
