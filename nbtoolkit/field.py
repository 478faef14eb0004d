"""How external fields reach every force and energy.

An external field is a gravitational potential that is not made by the bodies themselves: a host
galaxy, a tidal field. It is carried by the state (``state.field``, None by default), so every
force and energy computed from a state sees it without any integrator, gate or predictor being
written for it:

* :func:`nbtoolkit.physics.state_accelerations` and :func:`nbtoolkit.physics.accelerations_at`
  add the field's accelerations to the bodies' mutual gravity;
* :func:`nbtoolkit.physics.state_energy`, which the energy gate, the training loss, ``simulate``,
  ``evaluate`` and the viewer use, adds :func:`field_energy`: the potential energy of the bodies
  in the field plus the field's *frame term*, so that the sum is the quantity the dynamics
  conserves (the total energy for a static field, a Jacobi-like energy for a rotating one);
* :func:`advance` steps a state with any integrator: the built-in integrators evaluate the full
  force at every stage (``field_aware = True``); any other integrator is wrapped in a Strang
  splitting, a half kick by the field at the start time, the integrator's own step with the bodies'
  gravity alone, a half kick at the end time. The splitting is symplectic when the integrator is,
  and second order in the coupling to the field.

Shapes: B systems, N bodies, D = 2 or 3 dimensions; units are the state's, consistent with ``G``.
Padding bodies (mass 0, ``state.body_mask`` False) feel no field: their field acceleration is set
to 0 here, whatever the plugin returns; a field's energy must give them no share (weight by mass).

The contract that field plugins implement (:class:`ExternalField`) and the check every call to a
field goes through (:func:`~nbtoolkit.contracts.field.checked_field`) live in
:mod:`nbtoolkit.contracts.field`, beside the other extension points' contracts;
``from nbtoolkit.field import ExternalField`` keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .contracts.field import ExternalField, checked_field
from .state import NBodyState

if TYPE_CHECKING:
    from .contracts.integrator import Integrator

__all__ = ["ExternalField", "advance", "field_accelerations", "field_energy"]


def field_accelerations(state: NBodyState) -> Tensor:
    """The accelerations (B, N, D) of ``state.field`` at the state's positions and time, checked
    (:func:`~nbtoolkit.contracts.field.checked_field`) and 0 on padding bodies; zeros when the
    state has no field."""
    field = state.field
    if field is None:
        return torch.zeros_like(state.position)
    acc = checked_field(field, "accelerations", state, tuple(state.position.shape))
    return torch.where(state.body_mask.unsqueeze(-1), acc, torch.zeros_like(acc))


def field_energy(state: NBodyState) -> Tensor:
    """What ``state.field`` adds to each system's energy, (B,): its potential energy plus its frame
    term, both checked; zeros when the state has no field."""
    field = state.field
    if field is None:
        return state.position.new_zeros(state.batch_size)
    shape = (state.batch_size,)
    return checked_field(field, "potential_energy", state, shape) + checked_field(field, "frame_energy", state, shape)


def advance(integrator: Integrator, state: NBodyState, dt: Tensor) -> NBodyState:
    """One step of ``integrator`` by ``dt`` (B,) that honours ``state.field``.

    Without a field, or for an integrator that declares ``field_aware = True`` (it takes every
    acceleration from :func:`nbtoolkit.physics.accelerations_at` or ``state_accelerations``), this
    is ``integrator.step(state, dt)``. Otherwise the step is split: the field kicks the velocities
    by dt/2 at the start time, the integrator steps the bodies under their own gravity, the field
    kicks by dt/2 at the end time. The acceleration cache is dropped on both sides of the split
    (it would hold the bodies' gravity alone).
    """
    field = state.field
    if field is None or getattr(integrator, "field_aware", False):
        return integrator.step(state, dt)
    half = 0.5 * dt[:, None, None]
    kicked = state.replace(velocity=state.velocity + half * field_accelerations(state), field=None)
    inner = integrator.step(kicked, dt)
    out = inner.replace(field=field)
    return out.replace(velocity=out.velocity + half * field_accelerations(out))
