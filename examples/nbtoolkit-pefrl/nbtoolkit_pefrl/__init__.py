"""nbtoolkit-pefrl: an nbtoolkit plugin package.

Registers, through the entry point ``pefrl = "nbtoolkit_pefrl"`` of group ``nbtoolkit``:

* integrator ``pefrl``: :class:`~nbtoolkit_pefrl.integrator.PEFRL`, 4th order, symplectic,
  four force evaluations per step;
* dt predictor ``flyby``: :class:`~nbtoolkit_pefrl.predictor.FlybyDt` (option ``eta``).
"""

from __future__ import annotations

from nbtoolkit import hookimpl

from .integrator import PEFRL
from .predictor import FlybyDt

__version__ = "0.1.0"

__all__ = ["FlybyDt", "PEFRL", "nbtoolkit_register_dt_predictors", "nbtoolkit_register_integrators"]


@hookimpl
def nbtoolkit_register_integrators(register) -> None:
    """Register ``pefrl`` (factory: the class, no options)."""
    register("pefrl", PEFRL)


@hookimpl
def nbtoolkit_register_dt_predictors(register) -> None:
    """Register ``flyby`` (factory: the class, option ``eta``)."""
    register("flyby", FlybyDt)
