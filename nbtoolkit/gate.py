"""The whole-system energy gate, the default and the seed's gate.

The gate contract (:class:`Gate`) and its run-time check live in :mod:`nbtoolkit.contracts.gate`
beside the other extension points' contracts; ``from nbtoolkit.gate import Gate`` keeps working.
:class:`EnergyGate` (registered as ``energy``) measures the relative change of the total energy
of each system, |E1 - E0| / |E0|.
"""

from __future__ import annotations

from torch import Tensor

from .contracts.gate import Gate
from .physics import relative_energy_error, state_energy
from .state import NBodyState

__all__ = ["EnergyGate", "Gate", "is_energy_gate"]


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
