"""The external-field contract that plugins implement, and how fields reach every force and energy.

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
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import NBToolkitError, PluginError
from .registry import describe
from .state import NBodyState

if TYPE_CHECKING:
    from .integrator import Integrator


class ExternalField(abc.ABC):
    """Base class of external-field plugins. Subclasses implement :meth:`accelerations` and
    :meth:`potential_energy`; a field whose potential changes with time also implements
    :meth:`frame_energy` (or documents that the energy is not conserved)."""

    #: one line saying what the field is and which quantity it conserves, for tables and messages
    label: str = "external field"

    @abc.abstractmethod
    def accelerations(self, state: NBodyState) -> Tensor:
        """The field's acceleration of every body at ``state.position`` and ``state.time``,
        (B, N, D), differentiable with respect to the positions. Force per unit mass: the same for
        a body of any mass."""

    @abc.abstractmethod
    def potential_energy(self, state: NBodyState) -> Tensor:
        """The potential energy of the bodies in the field, sum_i m_i Phi(x_i, t), shape (B,).
        Its gradient with respect to x_i is -m_i times :meth:`accelerations`."""

    def frame_energy(self, state: NBodyState) -> Tensor:
        """The term added to T + U + :meth:`potential_energy` to make the conserved quantity, (B,):
        0 for a static field (the default), -Omega . L for a potential rotating rigidly at the
        angular velocity Omega (L the bodies' angular momentum)."""
        return state.position.new_zeros(state.batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def field_accelerations(state: NBodyState) -> Tensor:
    """The accelerations (B, N, D) of ``state.field`` at the state's positions and time, checked
    (see :func:`_checked`) and 0 on padding bodies; zeros when the state has no field."""
    field = state.field
    if field is None:
        return torch.zeros_like(state.position)
    acc = _checked(field, "accelerations", state, tuple(state.position.shape))
    return torch.where(state.body_mask.unsqueeze(-1), acc, torch.zeros_like(acc))


def field_energy(state: NBodyState) -> Tensor:
    """What ``state.field`` adds to each system's energy, (B,): its potential energy plus its frame
    term, both checked; zeros when the state has no field."""
    field = state.field
    if field is None:
        return state.position.new_zeros(state.batch_size)
    shape = (state.batch_size,)
    return _checked(field, "potential_energy", state, shape) + _checked(field, "frame_energy", state, shape)


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


def _checked(field: ExternalField, method: str, state: NBodyState, shape: tuple[int, ...]) -> Tensor:
    """Call ``field.method(state)`` and refuse, with a :class:`PluginError` naming the field and its
    plugin, an exception, a result that is not a floating-point tensor of ``shape``, or NaN/inf from a
    system whose positions and time are finite and within the range where gravity cannot overflow
    (|x| < finfo.max ** (1/3)): beyond that, a non-finite value is the blow-up the gate rejects."""
    try:
        value = getattr(field, method)(state)
    except (NBToolkitError, MemoryError):
        raise
    except Exception as exc:
        raise PluginError(f"{describe(field, 'external field')} raised {type(exc).__name__} in {method}(): {exc}") from exc
    if not isinstance(value, Tensor) or not value.is_floating_point():
        what = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
        raise PluginError(f"{describe(field, 'external field')} broke the field contract: {method}() returned {what}; "
                          f"expected a floating-point tensor of shape {shape}")
    if tuple(value.shape) != shape:
        raise PluginError(f"{describe(field, 'external field')} broke the field contract: {method}() returned shape "
                          f"{tuple(value.shape)}; expected {shape}")
    if not bool(torch.isfinite(value.detach()).all()):
        x = state.position.detach()
        sane = torch.isfinite(x).flatten(1).all(-1) & torch.isfinite(state.time.detach())
        sane &= x.abs().flatten(1).amax(-1) < torch.finfo(x.dtype).max ** (1.0 / 3.0)
        bad = ~torch.isfinite(value.detach()).reshape(state.batch_size, -1).all(-1) & sane
        if bool(bad.any()):
            b = int(torch.nonzero(bad)[0, 0])
            raise PluginError(f"{describe(field, 'external field')} broke the field contract: {method}() returned a non-finite "
                              f"value for system {b}, whose state is finite")
    return value
