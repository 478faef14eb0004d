"""The contract of every extension point, each beside its run-time check.

* integrators: :class:`Integrator` (an ABC, :mod:`.integrator`), checked by :func:`checked_step`;
* dt predictors: :class:`DtPredictor` (a ``torch.nn.Module``) reading a :class:`History`
  (:mod:`.predictor`), checked by :func:`checked_dt`;
* replay samplers: :class:`Sampler` (any callable of that signature, :mod:`.sampler`), checked by
  :func:`checked_sample`;
* gates: :class:`Gate` (an ABC, :mod:`.gate`), checked by :func:`checked_error`;
* external fields: :class:`ExternalField` (an ABC, :mod:`.field`), checked by :func:`checked_field`;
* observers: the hooks ``nbtoolkit_fit_start`` ... ``nbtoolkit_fit_end`` of
  :mod:`nbtoolkit.hookspecs`, receiving the events of :mod:`nbtoolkit.events`; an observer that
  raises is disabled and reported by the plugin host (:class:`nbtoolkit.PluginHost`).

Every object that enters a run goes through its check: the check calls the plugin (or reads its
answer), refuses what breaks the contract with a :class:`~nbtoolkit.errors.PluginError`
(:class:`~nbtoolkit.errors.InvalidTimestepError` for a dt) and names the object by the identity
its registry stamped on it (:func:`nbtoolkit.registry.describe`), e.g. ``gate 'pair-energy'
(plugin 'plugins.gates' from module plugins.gates)``. The old import paths keep working:
``nbtoolkit.integrator``, ``nbtoolkit.predictor``, ``nbtoolkit.gate``, ``nbtoolkit.field`` and
``nbtoolkit.training.replay.Sampler``.
"""

from __future__ import annotations

from .field import ExternalField, checked_field
from .gate import Gate, checked_error, error_problem
from .integrator import Integrator, checked_step, step_problem
from .predictor import DtPredictor, History, RunHooks, bind_integrator, checked_dt, observe_step, pop_force_evals
from .sampler import Sampler, checked_sample, indices_problem

__all__ = [
    "DtPredictor", "ExternalField", "Gate", "History", "Integrator", "RunHooks", "Sampler", "bind_integrator", "checked_dt",
    "checked_error", "checked_field", "checked_sample", "checked_step", "error_problem", "indices_problem",
    "observe_step", "pop_force_evals", "step_problem",
]
