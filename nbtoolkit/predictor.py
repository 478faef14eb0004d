"""The dt-predictor contract, importable from here as before: it lives in
:mod:`nbtoolkit.contracts.predictor`, beside the other extension points' contracts."""

from __future__ import annotations

from .contracts.predictor import DtPredictor, History, bind_integrator, checked_dt, observe_step, pop_force_evals

__all__ = ["DtPredictor", "History", "bind_integrator", "checked_dt", "observe_step", "pop_force_evals"]
