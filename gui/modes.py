"""The two kinds of run the viewer starts: training a dt predictor, or playing a simulation with one."""

from __future__ import annotations

MODE_TRAIN = "train"
MODE_SIMULATE = "simulate"
MODES = (MODE_TRAIN, MODE_SIMULATE)


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ValueError naming both."""
    if mode not in MODES:
        raise ValueError(f"mode must be '{MODE_TRAIN}' or '{MODE_SIMULATE}'; got {mode!r}")
    return mode
