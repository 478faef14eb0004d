"""Exception types raised by nbtoolkit.

Every error a user can cause derives from :class:`NBToolkitError`, so the CLI can print a
one-paragraph message (no traceback) for them and let genuine bugs surface. All of them live in
this module; the modules that raise them (``nbtoolkit.io``, ``nbtoolkit.reference``,
``nbtoolkit.interop.rebound``, ``nbtoolkit.training``) re-export theirs under the old names.
"""

from __future__ import annotations

import math


class NBToolkitError(Exception):
    """Base class of all user-facing nbtoolkit errors."""


class InvalidStateError(NBToolkitError, ValueError):
    """A state has non-finite values, non-positive masses, bad shapes or coincident bodies."""


class PluginError(NBToolkitError):
    """A plugin failed to import or register, or broke its contract at run time."""


class UnknownNameError(NBToolkitError, KeyError):
    """A name was looked up in a registry (or preset table) that does not hold it."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name in one registry."""


class InvalidTimestepError(NBToolkitError, ValueError):
    """A dt predictor returned dt <= 0, NaN or inf, or a tensor of the wrong shape."""


class StateFileError(NBToolkitError):
    """A state or trajectory file is missing, malformed or inconsistent."""


class ConfigError(NBToolkitError, ValueError):
    """A configuration value or file is invalid (the message names the key)."""


class OptionError(ConfigError, PluginError):
    """A plugin's option has a value that the plugin's declaration of it refuses (the message names
    the plugin and the option). Catchable as either parent."""


class InvalidStateFileError(StateFileError, InvalidStateError):
    """A state file whose arrays are readable but do not form a valid state (shapes that do not fit
    together, non-finite values, non-positive masses, coincident bodies, G <= 0, ...). Catchable as
    either parent."""


class ReferenceMismatchError(StateFileError):
    """A reference trajectory does not describe the evaluated system or has no output at its end time."""


class ReboundUnavailableError(NBToolkitError):
    """The optional dependency rebound is not installed."""


class UnsupportedSimulationError(NBToolkitError, ValueError):
    """A rebound simulation uses something nbtoolkit cannot represent (test particles, extra forces, ...)."""


class DistributedError(NBToolkitError):
    """A collective operation of data-parallel training failed: another training process exited,
    was killed, or cannot be reached."""


class CheckpointError(NBToolkitError):
    """A checkpoint file is missing, unreadable, corrupt, or does not match the model or plugins."""


class RetrainLimitError(NBToolkitError):
    """Part 1 retrained a system ``max_retrain_steps`` times in a row without passing the energy gate.

    Attributes: ``system`` (index in the batch), ``rel_dE`` (|dE/E| of the last attempt, inf if
    it blew up), ``threshold`` (the gate), ``attempts``, ``epoch`` and ``step`` (accepted steps
    of that system so far in the epoch).
    """

    def __init__(self, system: int, rel_dE: float, threshold: float, attempts: int, epoch: int, step: int,
                 detail: str = "") -> None:
        self.system = system
        self.rel_dE = rel_dE
        self.threshold = threshold
        self.attempts = attempts
        self.epoch = epoch
        self.step = step
        shown = "inf (the step blew up)" if not math.isfinite(rel_dE) else f"{rel_dE:.3e}"
        message = (
            f"system {system} failed the energy gate {attempts} times in a row at epoch {epoch}, step {step}: "
            f"last |dE/E| = {shown} > energy_threshold = {threshold:.3e}. "
            "Raise max_retrain_steps, lower learning_rate, or set on_retrain_limit = \"fallback\""
        )
        super().__init__(message + (f" ({detail})" if detail else ""))
