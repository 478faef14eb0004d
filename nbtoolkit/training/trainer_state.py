"""What a checkpoint holds of a :class:`~nbtoolkit.training.Trainer`, and a trainer put back from it.

:func:`trainer_payload` is what :meth:`Trainer.save_checkpoint` writes: the configuration, the
plugins, the model and optimizer, the counters and RNG, the systems with their history, stop
times and periods, the replay buffer and the calibration. :func:`restore_trainer` sets a trainer
that :meth:`Trainer.from_checkpoint` built from the saved configuration to where the run
stopped. In data-parallel training both go through :mod:`.shards` (one file for all ranks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import __version__
from ..errors import CheckpointError
from ..predictor import History
from ..state import NBodyState
from .checkpoint import history_from_dict, history_to_dict, load_predictor_state, plugin_info
from .shards import merge_payload, restore_shard

if TYPE_CHECKING:
    from .trainer import Trainer


def trainer_payload(trainer: Trainer) -> dict[str, Any]:
    """Everything :func:`restore_trainer` needs to continue exactly (tensors and plain values); in
    data-parallel training the whole run's, gathered from every rank (see :mod:`.shards`)."""
    cfg = trainer.config
    return merge_payload(trainer.collective, {
        "versions": {"nbtoolkit": str(__version__), "torch": str(torch.__version__)},
        "config": cfg.to_dict(),
        "plugins": {
            "integrator": plugin_info(trainer.host, "integrators", cfg.integrator),
            "predictor": plugin_info(trainer.host, "predictors", cfg.predictor),
            "sampler": plugin_info(trainer.host, "samplers", cfg.sampler),
            "gate": plugin_info(trainer.host, "gates", cfg.gate),
        },
        "predictor_options": dict(trainer.predictor_options),
        "predictor_state": {k: v.detach().cpu() for k, v in trainer.predictor.state_dict().items()},
        "optimizer_state": trainer.optimizer.state_dict(),
        "epoch": trainer.epoch,
        "totals": {"accepted": trainer.total_accepted, "retrains": trainer.total_retrains},
        "rng_state": trainer.generator.get_state(),
        "state": trainer.state.to_dict(),
        "initial_state": trainer.initial_state.to_dict(),
        "history": history_to_dict(trainer.history),
        "stop_time": None if trainer.stop_time is None else trainer.stop_time.cpu(),
        "period": None if trainer.period is None else trainer.period.cpu(),
        "buffer": {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in trainer.buffer.state_dict().items()},
        "calibration": None if trainer.calibration is None else trainer.calibration.as_dict(),
    })


def _same_layout(a: NBodyState, b: NBodyState) -> bool:
    return a.position.shape[1:] == b.position.shape[1:] and a.G == b.G and a.softening == b.softening


def restore_trainer(trainer: Trainer, data: dict[str, Any], where: str, saved_state: NBodyState, *,
                    new_systems: bool) -> None:
    """Load the model, optimizer, replay RNG, epoch and totals of the checkpoint contents ``data``
    into ``trainer`` (built with the checkpoint's configuration). The run's own systems
    (``new_systems`` False) also get back their initial state, history window and stop times;
    the replay buffer is restored for them, and for new systems of the same layout as the saved
    ones (``saved_state``: N, D, G and softening). ``where`` names the file in errors."""
    config = trainer.config
    load_predictor_state(trainer.predictor, data["predictor_state"], config.predictor, where)
    try:
        trainer.optimizer.load_state_dict(data["optimizer_state"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: optimizer state does not fit the predictor ({exc})") from None
    for group in trainer.optimizer.param_groups:
        group["lr"] = config.learning_rate
    try:
        trainer.generator.set_state(data["rng_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where} is malformed: key 'rng_state' is not a generator state ({exc})") from None
    trainer.epoch = int(data["epoch"])
    trainer.total_accepted = int(data["totals"]["accepted"])
    trainer.total_retrains = int(data["totals"]["retrains"])
    if not new_systems:
        initial = NBodyState.from_dict(data["initial_state"], where=f"{where}: initial_state", allow_padding=True)
        trainer.initial_state = initial.to(device=trainer.device).replace(field=trainer.field)
        history = history_from_dict(data["history"])
        history_len = int(getattr(trainer.predictor, "history_len", 0))
        if (history is None) != (history_len == 0):
            raise CheckpointError(f"{where}: its history window does not match history_len = {history_len}")
        trainer.history = None if history is None else History(*(t.to(trainer.device) for t in history))
        if config.stop_at_period and data["stop_time"] is not None:
            trainer.stop_time = data["stop_time"].to(trainer.device)
    if not new_systems or _same_layout(trainer.initial_state, saved_state):
        try:
            trainer.buffer.load_state_dict(data["buffer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{where}: replay buffer does not fit this configuration ({exc})") from None
    if trainer.collective.world_size > 1:
        restore_shard(trainer, data, new_systems)


__all__ = ["restore_trainer", "trainer_payload"]
