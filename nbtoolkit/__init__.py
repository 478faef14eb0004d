"""nbtoolkit: learned adaptive timesteps for gravitational N-body simulation."""

from __future__ import annotations

# imported first: the contracts import nbtoolkit.field, which imports nbtoolkit.contracts.field; the
# package must be loading already when nbtoolkit.field starts (it does, as nbtoolkit's first import)
from .contracts import DtPredictor, ExternalField, Gate, History, Integrator
from .control import RunControl, RunStopped
from .errors import (
    ConfigError,
    DuplicateNameError,
    InvalidStateError,
    InvalidTimestepError,
    NBToolkitError,
    PluginError,
    StateFileError,
    UnknownNameError,
)
from .hookspecs import hookimpl
from .physics import (
    accelerations,
    accelerations_at,
    angular_momentum,
    center_of_mass,
    kinetic_energy,
    linear_momentum,
    potential_energy,
    relative_energy_error,
    state_energy,
    to_center_of_mass_frame,
    total_energy,
)
from .plugin_manager import DEFAULT_PLUGINS, PluginHost, get_host, reset_host
from .state import NBodyState, System

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DEFAULT_PLUGINS", "DtPredictor", "DuplicateNameError", "ExternalField", "Gate", "History",
    "Integrator", "InvalidStateError", "InvalidTimestepError", "NBToolkitError", "NBodyState", "PluginError",
    "PluginHost", "RunControl", "RunStopped", "StateFileError", "System", "UnknownNameError", "accelerations",
    "accelerations_at", "angular_momentum", "center_of_mass", "get_host", "hookimpl", "kinetic_energy",
    "linear_momentum", "potential_energy", "relative_energy_error", "reset_host", "state_energy",
    "to_center_of_mass_frame", "total_energy",
]
