"""Plain-data events that the training engine sends to observer hooks.

Each event is a frozen dataclass of Python numbers and numpy arrays (never tensors attached
to a graph), so observers (progress bar, metrics log, GUI) can keep or ship them across
threads freely. ``k`` below is the number of systems the event concerns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FitStart:
    """Training is about to start (or resume at ``start_epoch``)."""

    epochs: int
    start_epoch: int
    n_systems: int
    n_bodies: int
    dim: int
    energy_threshold: float
    mass: np.ndarray  # (B, N)
    position: np.ndarray  # (B, N, D) initial positions
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepAccepted:
    """Part 1: some systems passed the energy gate and advanced by one step."""

    epoch: int
    step: int  # accepted-step counter within the epoch (0-based) of the first system listed
    systems: np.ndarray  # (k,) indices of the systems that advanced
    dt: np.ndarray  # (k,) accepted dt
    rel_dE: np.ndarray  # (k,) |dE/E| of the accepted step
    retrains: np.ndarray  # (k,) rejected attempts (optimizer steps) before this acceptance
    time: np.ndarray  # (k,) simulation time after the step
    position: np.ndarray  # (k, N, D) positions after the step
    velocity: np.ndarray  # (k, N, D) velocities after the step
    mass: np.ndarray  # (k, N)


@dataclass(frozen=True)
class StepRejected:
    """Part 1: some systems failed the gate; the predictor takes an optimizer step on them."""

    epoch: int
    step: int
    attempt: int  # 1-based retry counter for this step
    systems: np.ndarray  # (k,)
    dt: np.ndarray  # (k,) rejected dt
    rel_dE: np.ndarray  # (k,) |dE/E| of the rejected attempt (inf if the step blew up)
    loss: float


@dataclass(frozen=True)
class ReplayIteration:
    """Part 2: one minibatch was replayed (and, if any sample failed, trained on)."""

    epoch: int
    iteration: int  # 1-based
    batch_size: int
    pass_count: int
    fail_count: int
    mean_rel_dE: float
    max_rel_dE: float
    loss: float


@dataclass(frozen=True)
class EpochEnd:
    """An epoch (Part 1 + Part 2) finished."""

    epoch: int
    accepted_steps: int
    retrains: int
    replay_iterations: int
    replay_converged: bool
    replay_skipped: bool
    pass_rate: float  # fraction of the last replay minibatch that passed
    loss: float  # mean loss of the last replay minibatch
    mean_dt: float
    buffer_size: int
    wall_time: float  # seconds since fit start


@dataclass(frozen=True)
class FitEnd:
    """Training finished (``stopped`` is True when it was aborted or failed before the last epoch)."""

    epochs_completed: int
    total_accepted: int
    total_retrains: int
    wall_time: float
    stopped: bool
    error: str | None = None


def event_to_dict(event: Any) -> dict[str, Any]:
    """A JSON-friendly dict of an event (numpy arrays become lists), with its type name."""
    out: dict[str, Any] = {"event": type(event).__name__}
    for key, value in asdict(event).items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
