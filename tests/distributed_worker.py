"""Worker of the data-parallel tests: one rank of a gloo process group, started by ``torch.multiprocessing``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nbtoolkit.presets import make_preset
from nbtoolkit.training import TrainConfig, Trainer
from nbtoolkit.training.distributed import DataParallel

#: the systems and configuration both the single-process run and the ranks train on
SYSTEM = {"num_orbits": 6, "e_min": 0.5, "e_max": 0.9, "seed": 3}
CONFIG: dict[str, Any] = {"epochs": 2, "steps_per_epoch": 6, "seed": 5, "energy_threshold": 3e-5, "E_upper": 1e-5,
                          "E_lower": 1e-7, "replay_batch_size": 512, "replay_steps": 20, "calibrate_pass_rate": 0.0,
                          "history_len": 2, "predictor_options": {"init_factor": 0.3}}


def train(collective: Any = None, **overrides: Any) -> Trainer:
    """A trainer on :data:`SYSTEM` with :data:`CONFIG`, fitted."""
    system = make_preset("kepler-batch", **SYSTEM)
    trainer = Trainer(TrainConfig.from_dict({**CONFIG, **overrides}), system, collective=collective)
    trainer.result = trainer.fit()  # type: ignore[attr-defined]
    return trainer


def _outcome(trainer: Trainer) -> dict[str, Any]:
    return {"params": {k: v.clone() for k, v in trainer.predictor.state_dict().items()},
            "metrics": trainer.result.epoch_metrics, "total_retrains": trainer.total_retrains,  # type: ignore[attr-defined]
            "total_accepted": trainer.total_accepted}


def run_rank(rank: int, world_size: int, init_file: str, out_dir: str, checkpoint: str = "") -> None:
    """Train on this rank's shard (writing ``checkpoint`` at the end, if given) and save its parameters
    and epoch metrics to ``out_dir/rank<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        trainer = train(DataParallel(), checkpoint_path=checkpoint)
        torch.save(_outcome(trainer), Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


def resume_rank(rank: int, world_size: int, init_file: str, out_dir: str, checkpoint: str, epochs: int) -> None:
    """Resume ``checkpoint`` on this rank to ``epochs`` epochs, writing ``out_dir/resumed.pt``; save what
    the rank restored (before training) and its outcome to ``out_dir/resumed<r>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        trainer = Trainer.from_checkpoint(checkpoint, collective=DataParallel(), epochs=epochs,
                                          checkpoint_path=str(Path(out_dir) / "resumed.pt"))
        assert trainer.history is not None
        restored = {"offset": trainer.collective.offset, "state": trainer.state.position.clone(),
                    "history": [t.clone() for t in trainer.history],
                    "buffer": {k: v.clone() for k, v in trainer.buffer.state_dict()["data"].items()},
                    "rng_state": trainer.generator.get_state()}
        trainer.result = trainer.fit()  # type: ignore[attr-defined]
        torch.save({"restored": restored, **_outcome(trainer)}, Path(out_dir) / f"resumed{rank}.pt")
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


def _leave() -> None:
    """After a rank's work is saved: wait for the others, leave the group and end the process at once. gloo's
    threads now and then abort a process while the interpreter tears down ("terminate called without an
    active exception", SIGABRT, about one run in ten), which would fail a test whose work is done."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)
