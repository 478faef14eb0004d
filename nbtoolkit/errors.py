"""Exception types raised by nbtoolkit.

Every error a user can cause derives from :class:`NBToolkitError`, so the CLI can print a
one-paragraph message (no traceback) for them and let genuine bugs surface.
"""

from __future__ import annotations


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
