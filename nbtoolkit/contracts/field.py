"""The external-field contract that plugins implement, and its run-time check.

An external field is a gravitational potential that is not made by the bodies themselves: a host
galaxy, a tidal field. It travels with the state (``state.field``); :mod:`nbtoolkit.field` brings
it into every force and energy computed from a state, calling the field through
:func:`checked_field`. Shapes: B systems, N bodies, D = 2 or 3 dimensions; units are the state's,
consistent with ``G``. Padding bodies (mass 0, ``state.body_mask`` False) feel no field; a field's
energy must give them no share (weight by mass).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from ..errors import PluginError
from ..registry import describe
from ..state import NBodyState
from .calls import call_plugin


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


def checked_field(field: ExternalField, method: str, state: NBodyState, shape: tuple[int, ...]) -> Tensor:
    """``field.<method>(state)``, checked: an exception, a result that is not a floating-point
    tensor of ``shape``, or NaN/inf from a system whose positions and time are finite and within the
    range where gravity cannot overflow (|x| < finfo.max ** (1/3)) is a
    :class:`~nbtoolkit.errors.PluginError` naming the field and its plugin. Beyond that range, a
    non-finite value is the blow-up the gate rejects."""
    value = call_plugin(field, "external field", f"in {method}()", lambda: getattr(field, method)(state))
    problem = _value_problem(value, state, shape)
    if problem is not None:
        raise PluginError(f"{describe(field, 'external field')} broke the field contract: {method}() {problem}")
    return value


def _value_problem(value: object, state: NBodyState, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``value`` as a field's answer of ``shape`` for ``state``, or None if nothing."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        what = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
        return f"returned {what}; expected a floating-point tensor of shape {shape}"
    if tuple(value.shape) != shape:
        return f"returned shape {tuple(value.shape)}; expected {shape}"
    if not bool(torch.isfinite(value.detach()).all()):
        x = state.position.detach()
        sane = torch.isfinite(x).flatten(1).all(-1) & torch.isfinite(state.time.detach())
        sane &= x.abs().flatten(1).amax(-1) < torch.finfo(x.dtype).max ** (1.0 / 3.0)
        bad = ~torch.isfinite(value.detach()).reshape(state.batch_size, -1).all(-1) & sane
        if bool(bad.any()):
            return f"returned a non-finite value for system {int(torch.nonzero(bad)[0, 0])}, whose state is finite"
    return None
