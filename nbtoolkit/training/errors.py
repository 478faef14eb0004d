"""Errors raised by the training engine (all :class:`~nbtoolkit.errors.NBToolkitError`)."""

from __future__ import annotations

import math

from ..errors import NBToolkitError


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


class CheckpointError(NBToolkitError):
    """A checkpoint file is missing, unreadable, corrupt, or does not match the model or plugins."""
