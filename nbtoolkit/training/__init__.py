"""Training a dt predictor with the generalization loop (Part 1 collection + Part 2 replay).

Quick start::

    from nbtoolkit.presets import make_preset
    from nbtoolkit.training import TrainConfig, Trainer, load_predictor

    system = make_preset("kepler-batch", num_orbits=8, e_min=0.5, e_max=0.95)
    trainer = Trainer(TrainConfig(epochs=20, checkpoint_path="model.pt"), system)
    result = trainer.fit()
    predictor = load_predictor("model.pt")  # a DtPredictor for nbtoolkit.simulate

This package exports what a user of the loop needs: the trainer and its configuration, the
training sets, checkpoints and model files, the safety calibration, and the seed's functions
of the loop itself (Part 1, Part 2 and their single-step primitives) with the
:class:`LoopContext` they share. Everything else lives in the submodules
(:mod:`.steps`, :mod:`.replay`, :mod:`.distributed`, ...).
"""

from __future__ import annotations

from ..errors import CheckpointError, RetrainLimitError
from .buffer import ReplayBuffer
from .calibrate import CalibrationResult, calibrate_safety
from .checkpoint import export_model, load_predictor, load_trained, read_checkpoint, read_model
from .collect import CollectResult, collect_trajectory
from .config import TrainConfig
from .context import LoopContext
from .recalibrate import recalibrate_model
from .replay import Minibatch, ReplayOutcome, evaluate_minibatch, generalize_on_trajectory, sample_minibatch
from .steps import attempt_single_step, check_energy_threshold, compute_single_step_loss
from .trainer import FitResult, Trainer
from .trainset import TrainingSet, builtin_training_sets, load_training_set

__all__ = [
    # training
    "FitResult", "TrainConfig", "Trainer", "RetrainLimitError",
    # training sets
    "TrainingSet", "builtin_training_sets", "load_training_set",
    # checkpoints and model files
    "CheckpointError", "export_model", "load_predictor", "load_trained", "read_checkpoint", "read_model",
    # safety calibration
    "CalibrationResult", "calibrate_safety", "recalibrate_model",
    # the loop: Part 1, Part 2 and their primitives (the seed's names)
    "CollectResult", "LoopContext", "Minibatch", "ReplayBuffer", "ReplayOutcome", "attempt_single_step",
    "check_energy_threshold", "collect_trajectory", "compute_single_step_loss", "evaluate_minibatch",
    "generalize_on_trajectory", "sample_minibatch",
]
