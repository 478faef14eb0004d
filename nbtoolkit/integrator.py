"""The integrator contract, importable from here as before: it lives in
:mod:`nbtoolkit.contracts.integrator`, beside the other extension points' contracts."""

from __future__ import annotations

from .contracts.integrator import Integrator

__all__ = ["Integrator"]
