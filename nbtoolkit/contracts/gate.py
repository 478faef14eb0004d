"""The acceptance-gate contract that plugins implement, and its run-time check.

A gate judges one step: it maps the state a step started from and the state it reached to an
error per system, a tensor of shape (B,), dimensionless, >= 0 and +inf where the step blew up.
A step passes when its error is at most the threshold (``energy_threshold`` in training, the
guard threshold of ``simulate``, ``--threshold`` of ``evaluate``). Training learns dt against
the same error (the band loss of :mod:`nbtoolkit.training.steps`), so a gate must be
differentiable with respect to the state after the step.

The default gate, the seed's relative energy error, is :class:`nbtoolkit.gate.EnergyGate`
(registered as ``energy``). Every answer a gate gives goes through :func:`checked_error`.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from ..errors import PluginError
from ..registry import describe
from ..state import NBodyState
from .calls import call_plugin


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


def checked_error(gate: Gate, before: NBodyState, after: NBodyState, reference: Tensor | None = None) -> Tensor:
    """The gate's error (B,) of the step from ``before`` to ``after``, checked.

    Raises :class:`~nbtoolkit.errors.PluginError` naming the gate, its plugin and its module or
    distribution (:func:`~nbtoolkit.registry.describe`) when :meth:`Gate.error` raises, or returns
    something other than a floating-point tensor of shape (B,), or a NaN or negative error (a
    blown-up step must give +inf). Keeps the autograd graph: the checks only read values.
    """
    error = call_plugin(gate, "gate", "in error()", lambda: gate.error(before, after, reference))
    problem = error_problem(before.batch_size, error)
    if problem is not None:
        raise PluginError(f"{describe(gate, 'gate')} broke the gate contract: {problem}")
    return error


def error_problem(batch: int, error: object) -> str | None:
    """What is wrong with ``error`` as a gate's answer for ``batch`` systems, or None if nothing."""
    if not isinstance(error, Tensor):
        return f"error() returned {type(error).__name__}, not a tensor"
    if error.shape != (batch,):
        return f"error() returned shape {tuple(error.shape)}; expected ({batch},), one error per system"
    if not error.is_floating_point():
        return f"error() returned dtype {error.dtype}; expected a floating-point tensor"
    bad = torch.isnan(error.detach()) | (error.detach() < 0)
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0, 0])
        return (f"error() returned {error[b].item()} for system {b}; errors must be >= 0, "
                "and +inf (not NaN) for a step that blew up")
    return None
