"""Checkpoints of data-parallel training: one file for all ranks, restored on any world size.

Rank 0 writes the file; every rank contributes through one ``all_gather_object``. The file is
an ordinary checkpoint, so :func:`~nbtoolkit.training.load_predictor`, ``simulate`` and a
single-process resume read it unchanged:

* ``state``, ``history``, ``stop_time`` and ``period`` are the global ones (the shards concatenated in rank
  order, which is the global system order);
* ``buffer`` is every rank's replay buffer merged, its samples oldest first by
  ``order * W + rank`` (the ranks collect in lockstep, so this interleaves them by time), with
  capacity ``W * buffer_capacity``; ``rng_state`` is rank 0's;
* ``world_size`` is W, and ``shards`` holds each rank's own buffer and replay RNG state.

Resume with the same world size restores every rank exactly (its shard of the systems, its own
buffer and RNG). With another world size the systems are re-sharded, every rank keeps the
merged buffer's samples of its own systems (oldest first, at most ``buffer_capacity``), and
the replay RNGs start afresh from ``seed + rank``; so the run continues correctly but not
bit-for-bit as it would have on the old world size. Resuming on *new* systems splits the
merged buffer among the ranks by sample index (``i % W == rank``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..predictor import History
from .checkpoint import history_from_dict
from .distributed import Collective, shard_bounds


def _cat(parts: list[Any]) -> Any:
    """Concatenate along the batch dimension: tensors, dicts of them (numbers taken from the first), None."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _cat([p[key] for p in parts]) for key in first}
    return first


def _relayout(saved: dict[str, Any], data: dict[str, Tensor], capacity: int, count: int) -> dict[str, Any]:
    """A buffer state dict holding ``data``'s samples oldest first (by ``order``), at most ``capacity``."""
    keep = data["order"].argsort()[-capacity:]
    size = int(keep.numel())
    return {**saved, "capacity": capacity, "size": size, "next": size % capacity, "count": count,
            "data": {key: value[keep] for key, value in data.items()}}


def merge_payload(collective: Collective, payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint payload of the whole run from this rank's ``payload`` (on every rank)."""
    if collective.world_size == 1:
        return {**payload, "world_size": 1}
    W = collective.world_size
    local = {key: payload[key] for key in ("state", "history", "stop_time", "period", "buffer", "rng_state")}
    parts = collective.gather(local)
    buffers = [p["buffer"] for p in parts]
    data = _cat([b["data"] for b in buffers])
    data["order"] = torch.cat([b["data"]["order"] * W + r for r, b in enumerate(buffers)])
    merged = _relayout(buffers[0], data, W * int(buffers[0]["capacity"]), W * max(int(b["count"]) for b in buffers))
    return {**payload, "state": _cat([p["state"] for p in parts]), "history": _cat([p["history"] for p in parts]),
            "stop_time": _cat([p["stop_time"] for p in parts]), "period": _cat([p["period"] for p in parts]),
            "buffer": merged, "world_size": W,
            "shards": [{"buffer": p["buffer"], "rng_state": p["rng_state"]} for p in parts]}


def restore_shard(trainer: Any, data: dict[str, Any], new_systems: bool) -> None:
    """After :meth:`Trainer.from_checkpoint` restored the global run, keep this rank's part of it.

    ``trainer.history`` and ``trainer.stop_time`` are cut to the rank's systems; the buffer and
    the replay RNG are the rank's own (same world size) or re-sharded (see the module docstring).
    """
    collective = trainer.collective
    W, rank = collective.world_size, collective.rank
    lo, hi = shard_bounds(collective.n_systems, rank, W)
    if not new_systems:
        history = history_from_dict(data["history"])
        if history is not None:
            trainer.history = History(*(t[lo:hi].to(trainer.device) for t in history))
        if trainer.config.stop_at_period and data["stop_time"] is not None:
            trainer.stop_time = data["stop_time"][lo:hi].to(trainer.device)
    shards = data.get("shards")
    if not new_systems and shards is not None and len(shards) == W:
        trainer.buffer.load_state_dict(shards[rank]["buffer"])
        trainer.generator.set_state(shards[rank]["rng_state"])
        return
    trainer.generator.manual_seed(trainer.config.seed + rank)
    if len(trainer.buffer) == 0:  # nothing was saved, or the saved samples do not fit these systems
        return
    saved = data["buffer"]
    samples = saved["data"]
    if new_systems:
        mine = torch.arange(samples["order"].numel()) % W == rank
    else:
        mine = (samples["system"] >= lo) & (samples["system"] < hi)
    mine_data = {key: value[mine] for key, value in samples.items()}
    trainer.buffer.load_state_dict(_relayout(saved, mine_data, trainer.buffer.capacity, int(saved["count"])))
