"""Data-parallel training on ``torch.distributed``: the collectives the training loop calls.

The loop talks to a :class:`Collective`. The base class is the single process: every method
returns its input or does nothing, so a run in one process is bit-identical to one without
this module. :class:`DataParallel` is the same interface across the ranks of a process group
(gloo on CPU, nccl on CUDA), started by ``torchrun`` (see :func:`from_environment`).

Sharding. Rank r owns the contiguous block of systems ``[r B / W, (r + 1) B / W)`` of the B
global systems (W = world size): their states, history windows and its own replay buffer and
replay RNG (seeded ``seed + r``). The predictor is broadcast from rank 0 at the start.

Gradients: an explicit all-reduce, not DDP. Every rank evaluates its own systems, then one
small ``all_gather`` of per-rank sums (failing and passing counts, loss sums, error and dt sums)
gives every rank the same global figures. Each rank's objective is its share of the *global*
objective of :func:`~nbtoolkit.training.steps.batch_objective` (its failing losses divided by
the global number of failing samples, likewise for the efficiency term), so the summed
gradient is the gradient of the single-process objective on the union of the batches, not an
average that weights ranks equally. Gradients are flattened into one tensor and summed with
one ``all_reduce``; every rank then clips and steps the same gradient with the same Adam state,
so the parameters stay bit-identical. A rank with nothing to evaluate adds ``0 * sum(params)``
to its objective: it contributes zero gradient and still joins every collective.

Decisions are collective: Part 1 runs rounds while any rank has a collecting system (the
round's ``all_gather`` also carries whether each rank still collects after it, so a round costs
that one exchange and the gradient ``all_reduce``), a round retrains when any rank has a failing
system; Part 2 stops when the minibatch passes on every rank (same ``replay_steps`` cap), and is
skipped when the global buffer is shorter than ``min_replay_size``.

Faults. A collective that fails because another rank exited, was killed or cannot be reached
raises :class:`~nbtoolkit.errors.DistributedError` on this rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError, DistributedError
from ..state import NBodyState
from .config import TrainConfig
from .steps import batch_objective


@dataclass(frozen=True)
class Round:
    """The collective outcome of one evaluated batch (a Part 1 attempt or a Part 2 minibatch).

    ``objective``: this rank's scalar on the graph of the predictor; ``any_failed``: a sample
    failed the gate on some rank; ``value``: the global objective (a float, equal on every rank;
    > 0 means an optimizer step is due); ``metrics``: the Part 2 metrics dict made global (or
    None when none was given); ``collecting``: the ``collecting`` flag of :meth:`Collective.round`
    was true on some rank."""

    objective: Tensor
    any_failed: bool
    value: float
    metrics: dict[str, Any] | None
    collecting: bool = False


class _SilentHook:
    """Stands in for ``host.hook`` on ranks other than 0: every hook call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


class Collective:
    """One process: the identity. Subclasses reduce across ranks."""

    rank = 0
    world_size = 1
    #: first global system index of this rank's shard
    offset = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that reports (fires observer events, writes checkpoints)."""
        return self.rank == 0

    def observers(self, hook: Any) -> Any:
        """``hook`` on the main rank, a hook that does nothing elsewhere."""
        return hook if self.is_main else _SilentHook()

    def shard_systems(self, state: NBodyState, period: Tensor | None) -> tuple[NBodyState, Tensor | None]:
        """This rank's systems of the global ``state`` (B,) and ``period`` (B,) (all of them here)."""
        return state, period

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        return flag

    def total(self, values: list[float]) -> list[float]:
        """Element-wise sums of ``values`` over the ranks."""
        return values

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        return [obj]

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank's parameters and buffers those of rank 0."""

    def reduce_gradients(self, params: list[Tensor]) -> None:
        """Sum the gradients of ``params`` over the ranks (in place)."""

    def round(self, losses: Tensor | None, rel_dE: Tensor | None, config: TrainConfig, predictor: torch.nn.Module,
              metrics: dict[str, Any] | None = None, collecting: bool = False) -> Round:
        """The objective of one evaluated batch: ``losses`` and ``rel_dE`` (k,) of this rank's samples
        (None: this rank evaluated nothing), ``metrics`` the batch's Part 2 metrics to make global,
        ``collecting`` this rank's flag (Part 1: it still has systems to collect from) to make global."""
        assert losses is not None and rel_dE is not None
        objective = batch_objective(losses, rel_dE, config)
        any_failed = not bool((rel_dE <= config.energy_threshold).all())
        return Round(objective, any_failed, float(objective.detach()), metrics, collecting)


#: the single process
LOCAL = Collective()


def shard_bounds(n_systems: int, rank: int, world_size: int) -> tuple[int, int]:
    """Global indices ``[lo, hi)`` of the systems rank ``rank`` of ``world_size`` owns."""
    return rank * n_systems // world_size, (rank + 1) * n_systems // world_size


_T = TypeVar("_T")


def _communicate(rank: int, what: str, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """``call(*args, **kwargs)``, a ``torch.distributed`` operation; its failure (gloo and nccl raise
    ``RuntimeError``, of which ``DistError`` is a subclass) becomes a :class:`DistributedError`."""
    try:
        return call(*args, **kwargs)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise DistributedError(
            f"training process {rank} lost the others in {what} ({detail}); the run stops: resume it from "
            "its last checkpoint with --resume") from exc


class DataParallel(Collective):
    """The ranks of the default ``torch.distributed`` process group (which must be initialised)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        self.n_systems = 0

    def shard_systems(self, state: NBodyState, period: Tensor | None) -> tuple[NBodyState, Tensor | None]:
        B = state.batch_size
        if B < self.world_size:
            raise ConfigError(f"data-parallel training on {self.world_size} processes needs at least as many "
                              f"systems; got {B}")
        self.n_systems = B
        lo, hi = shard_bounds(B, self.rank, self.world_size)
        self.offset = lo
        return state.index(slice(lo, hi)), None if period is None else period[lo:hi]

    def _gather_rows(self, row: list[float]) -> Tensor:
        """Every rank's ``row``, stacked: (W, len(row)) float64 on the CPU."""
        t = torch.tensor(row, dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        _communicate(self.rank, "all_gather", dist.all_gather, out, t)
        return torch.stack(out).cpu()

    def any(self, flag: bool) -> bool:
        return bool(self._gather_rows([float(flag)]).sum() > 0)

    def total(self, values: list[float]) -> list[float]:
        return [float(v) for v in self._gather_rows([float(v) for v in values]).sum(0)]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        _communicate(self.rank, "all_gather_object", dist.all_gather_object, out, obj)
        return out

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                moved = tensor.to(self.device)
                _communicate(self.rank, "broadcast", dist.broadcast, moved, src=0)
                tensor.copy_(moved)

    def reduce_gradients(self, params: list[Tensor]) -> None:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        _communicate(self.rank, "all_reduce", dist.all_reduce, flat)
        start = 0
        for p in params:
            n = p.numel()
            p.grad = flat[start:start + n].view_as(p).to(p.device)
            start += n

    def round(self, losses: Tensor | None, rel_dE: Tensor | None, config: TrainConfig, predictor: torch.nn.Module,
              metrics: dict[str, Any] | None = None, collecting: bool = False) -> Round:
        objective = torch.stack([p.sum() for p in predictor.parameters()]).sum() * 0.0  # on every parameter's graph
        row = [0.0] * 8 + [float(collecting)]
        if losses is not None and rel_dE is not None and rel_dE.numel():
            passed = rel_dE <= config.energy_threshold
            row[:4] = [float((~passed).sum()), float(passed.sum()), float(losses.detach()[~passed].sum()),
                       float(losses.detach()[passed].sum())]
        if metrics is not None and metrics["batch_size"]:
            k = metrics["batch_size"]
            row[4:8] = [k, metrics["mean_rel_dE"] * k, metrics["max_rel_dE"], metrics["mean_dt"] * k]
        rows = self._gather_rows(row)
        n_fail, n_pass, fail_sum, pass_sum = (float(v) for v in rows[:, :4].sum(0))
        value = 0.0
        if n_fail:
            value += fail_sum / n_fail
            if row[0]:
                objective = objective + losses[~passed].sum() / n_fail  # type: ignore[index]
        if config.efficiency_weight > 0 and n_pass:
            value += config.efficiency_weight * pass_sum / n_pass
            if row[1]:
                objective = objective + config.efficiency_weight * losses[passed].sum() / n_pass  # type: ignore[index]
        merged = None
        if metrics is not None:
            k = float(rows[:, 4].sum())
            merged = {**metrics, "pass_count": int(n_pass), "fail_count": int(n_fail), "batch_size": int(k),
                      "mean_rel_dE": float(rows[:, 5].sum()) / k if k else 0.0,
                      "max_rel_dE": float(rows[:, 6].max()), "mean_dt": float(rows[:, 7].sum()) / k if k else 0.0}
        return Round(objective, n_fail > 0, value, merged, bool(rows[:, 8].sum() > 0))


#: the environment variables through which torchrun tells a rank where the others are
_RENDEZVOUS_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def from_environment(device: str = "cpu") -> Collective:
    """:data:`LOCAL`, or under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the default
    process group, initialised here if needed: gloo for ``device`` cpu, nccl for cuda (each rank
    then uses GPU ``LOCAL_RANK``). Rendezvous comes from torchrun's environment variables, so
    nothing assumes one host."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return LOCAL
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:300]
            where = ", ".join(f"{key}={os.environ.get(key, '(not set)')}" for key in _RENDEZVOUS_KEYS)
            raise DistributedError(
                f"training process {os.environ.get('RANK', '?')} could not join the {backend} process group "
                f"({where}): {detail}. Start distributed training with torchrun or nbtoolkit train --nproc, "
                "which set these") from exc
    return DataParallel()


def report_once() -> bool:
    """True for the first rank of the run to ask (it prints the error), False for the others, whose
    failure is a consequence of it (a collective broken by the stopped rank). Asks torchrun's
    key-value store, which outlives the ranks; True when there is none to ask."""
    try:
        store = dist.distributed_c10d._get_default_store()
        return int(store.add("nbtoolkit/failed", 1)) == 1
    except Exception:  # no store left to ask: better twice than never
        return True


def shutdown(collective: Collective) -> None:
    """Leave the process group after a run that ended normally (nothing in one process). The
    barrier first keeps a rank from closing its connections while another still uses them
    (gloo aborts the process whose peer vanished)."""
    if collective.world_size > 1 and dist.is_initialized():
        _communicate(collective.rank, "the closing barrier", dist.barrier)
        dist.destroy_process_group()
