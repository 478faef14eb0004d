"""Training a dt predictor with the generalization loop (Part 1 collection + Part 2 replay).

Quick start::

    from nbtoolkit.presets import make_preset
    from nbtoolkit.training import TrainConfig, Trainer, load_predictor

    system = make_preset("kepler-batch", num_orbits=8, e_min=0.5, e_max=0.95)
    trainer = Trainer(TrainConfig(epochs=20, checkpoint_path="model.pt"), system.state, period=system.period)
    result = trainer.fit()
    predictor = load_predictor("model.pt")  # a DtPredictor for nbtoolkit.simulate
"""

from __future__ import annotations

from ..errors import CheckpointError, RetrainLimitError
from .buffer import ReplayBuffer
from .checkpoint import load_predictor, read_checkpoint
from .collect import CollectResult, collect_trajectory
from .config import TrainConfig
from .context import LoopContext
from .replay import (
    Minibatch,
    ReplayOutcome,
    evaluate_minibatch,
    generalize_on_trajectory,
    sample_minibatch,
    uniform_indices,
)
from .steps import (
    attempt_single_step,
    batch_objective,
    check_energy_threshold,
    compute_single_step_loss,
    predict_and_step,
)
from .trainer import FitResult, Trainer

__all__ = [
    "CheckpointError", "CollectResult", "FitResult", "LoopContext", "Minibatch", "ReplayBuffer", "ReplayOutcome",
    "RetrainLimitError", "TrainConfig", "Trainer", "attempt_single_step", "batch_objective", "check_energy_threshold",
    "collect_trajectory", "compute_single_step_loss", "evaluate_minibatch", "generalize_on_trajectory", "load_predictor",
    "predict_and_step", "read_checkpoint", "sample_minibatch", "uniform_indices",
]
