"""Hook specifications: the complete contract between nbtoolkit and its plugins.

Plugins implement these with the :data:`hookimpl` marker (``from nbtoolkit import hookimpl``).
Hooks are always called with keyword arguments.

Registration hooks receive a ``register(name, factory)`` callback. ``factory(**options)``
builds the object, of its extension point's contract (:mod:`nbtoolkit.contracts`); options are
keyword arguments chosen by the user (for example ``eta`` or ``dt``), so factories should accept
only the options they understand.

Observer hooks receive one event dataclass from :mod:`nbtoolkit.events` (plain numbers and
numpy arrays, no tensors attached to a graph) and return nothing. An observer declares the
options it reads from the training configuration through ``nbtoolkit_register_observer_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .events import EpochEnd, FitEnd, FitStart, ReplayIteration, StepAccepted, StepRejected
    from .options import Setting

PROJECT = "nbtoolkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Callable[..., Any]], None]
RegisterOption = Callable[["Setting"], None]


@hookspec
def nbtoolkit_register_integrators(register: Register) -> None:
    """Register integrators: ``register(name, factory)``; ``factory(**options)`` returns an
    :class:`nbtoolkit.contracts.Integrator` (advances a batched state by dt (B,), differentiable
    in dt, with ``order`` and ``force_evals_per_step``)."""


@hookspec
def nbtoolkit_register_dt_predictors(register: Register) -> None:
    """Register dt predictors: ``register(name, factory)``; ``factory(**options)`` returns an
    :class:`nbtoolkit.contracts.DtPredictor` mapping ``(state, history)`` to dt (B,) > 0."""


@hookspec
def nbtoolkit_register_replay_samplers(register: Register) -> None:
    """Register replay samplers: ``register(name, factory)``; ``factory(**options)`` returns an
    :class:`nbtoolkit.contracts.Sampler`, a callable ``sampler(buffer, batch_size, generator) ->
    LongTensor`` of distinct buffer indices."""


@hookspec
def nbtoolkit_register_gates(register: Register) -> None:
    """Register acceptance gates: ``register(name, factory)``; ``factory(**options)`` returns a
    :class:`nbtoolkit.contracts.Gate` mapping (state before, state after) a step to an error (B,) >= 0,
    compared with the threshold for pass/fail and differentiable for training."""


@hookspec
def nbtoolkit_register_external_fields(register: Register) -> None:
    """Register external fields: ``register(name, factory)``; ``factory(**options)`` returns an
    :class:`nbtoolkit.contracts.ExternalField` giving accelerations (B, N, D) and a potential energy (B,)
    of a batched state (optionally time-dependent, with a frame term making the conserved energy)."""


# ----------------------------------------------------------------------------- observers
@hookspec
def nbtoolkit_register_observer_options(register: RegisterOption) -> None:
    """Declare the options an observer reads from the training configuration: ``register(setting)``
    with an :class:`nbtoolkit.options.Setting` (name, type, default, ``Option(help, check)``). A
    run's values, checked by these declarations and with the declared defaults filled in, are the
    ``observer_options`` of ``FitStart.config``."""


@hookspec
def nbtoolkit_fit_start(event: FitStart) -> None:
    """Training starts; ``event`` is a :class:`nbtoolkit.events.FitStart`."""


@hookspec
def nbtoolkit_step_accepted(event: StepAccepted) -> None:
    """Part 1 accepted a step for some systems; :class:`nbtoolkit.events.StepAccepted`."""


@hookspec
def nbtoolkit_step_rejected(event: StepRejected) -> None:
    """Part 1 rejected a step and retrains; :class:`nbtoolkit.events.StepRejected`."""


@hookspec
def nbtoolkit_replay_iteration(event: ReplayIteration) -> None:
    """Part 2 replayed one minibatch; :class:`nbtoolkit.events.ReplayIteration`."""


@hookspec
def nbtoolkit_epoch_end(event: EpochEnd) -> None:
    """An epoch finished; :class:`nbtoolkit.events.EpochEnd`."""


@hookspec
def nbtoolkit_fit_end(event: FitEnd) -> None:
    """Training finished or stopped; :class:`nbtoolkit.events.FitEnd`."""

