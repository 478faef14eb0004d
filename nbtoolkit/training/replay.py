"""Part 2: generalization on the replay buffer, one batched computation per minibatch.

Each iteration samples a minibatch of distinct buffer indices, gathers those states and their
own history windows, and evaluates them all at once (features -> dt -> integrator step ->
the gate's error, |dE/E| for the default energy gate). If any sample fails the gate, the mean
loss of the failing samples is
backpropagated. With ``efficiency_weight`` w > 0, w times the mean band loss of the *passing*
samples is added, which pushes dt up where |dE/E| < E_lower (and down where it sits between
E_upper and the gate); that term is applied even on the iteration that converges.

Converged when every sample of a minibatch passes; capped at ``replay_steps`` iterations.
Buffer states are never modified; only their last measured |dE/E| is updated (for samplers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..control import RunControl, RunStopped
from ..errors import NBToolkitError, PluginError
from ..events import ReplayIteration
from ..gate import Gate
from ..integrator import Integrator
from ..predictor import DtPredictor, History
from ..state import NBodyState
from .buffer import ReplayBuffer
from .config import TrainConfig
from .distributed import LOCAL, Collective
from .steps import optimizer_step, predict_and_step

#: ``sampler(buffer, batch_size, generator) -> LongTensor`` of distinct indices into the buffer
Sampler = Callable[[ReplayBuffer, int, torch.Generator | None], Tensor]


def uniform_indices(buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``min(batch_size, len(buffer))`` distinct indices drawn uniformly without replacement, (k,) long."""
    n = len(buffer)
    return torch.randperm(n, generator=generator)[: min(batch_size, n)].to(buffer.device)


@dataclass(frozen=True)
class Minibatch:
    """Replay samples gathered from a buffer: ``indices`` (k,), ``state`` (B = k), ``history``
    windows (k, K, N, D) or None, and ``dt`` (k,) accepted for them in Part 1. Copies: changing
    them does not change the buffer."""

    indices: Tensor
    state: NBodyState
    history: History | None
    dt: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


def sample_minibatch(buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None,
                     sampler: Sampler | None = None, *, sampler_name: str = "uniform") -> Minibatch:
    """Draw a minibatch of at most ``batch_size`` distinct samples (capped at the buffer size).

    ``sampler`` picks the indices (default: uniform without replacement, the seed's rule);
    its answer is checked: a 1-D tensor of distinct in-range indices, no more than asked for.
    """
    n = len(buffer)
    k = min(int(batch_size), n)
    if k <= 0:
        idx = torch.zeros(0, dtype=torch.long, device=buffer.device)
    elif sampler is None:
        idx = uniform_indices(buffer, k, generator)
    else:
        try:
            idx = sampler(buffer, k, generator)
        except (NBToolkitError, MemoryError):
            raise
        except Exception as exc:
            raise PluginError(f"{_describe(sampler_name, sampler)} raised {type(exc).__name__}: {exc}") from exc
        _check_indices(idx, n, k, _describe(sampler_name, sampler))
    state, history = buffer.gather(idx)
    return Minibatch(indices=idx, state=state, history=history, dt=buffer.dt[idx].clone())


def _describe(name: str, sampler: Any) -> str:
    """``replay sampler 'NAME' (plugin 'P' from SOURCE)`` where the registry knows it."""
    from ..contracts import sampler_origin

    try:
        return sampler_origin(sampler, name=name)
    except Exception:  # describing must never hide the real error
        return f"replay sampler '{name}'"


def _check_indices(idx: Any, n: int, k: int, label: str) -> None:
    if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.dtype != torch.long:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        raise PluginError(f"{label} must return a 1-D LongTensor of indices; got {shape}")
    if idx.numel() == 0 or idx.numel() > k:
        raise PluginError(f"{label} returned {idx.numel()} indices; expected 1 to {k}")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise PluginError(f"{label} returned an index outside [0, {n})")
    if torch.unique(idx).numel() != idx.numel():
        raise PluginError(f"{label} returned duplicate indices")


def evaluate_minibatch(predictor: DtPredictor, integrator: Integrator, minibatch: Minibatch, config: TrainConfig,
                       *, predictor_name: str = "predictor", gate: Gate | None = None,
                       gate_name: str | None = None) -> tuple[bool, Tensor, Tensor, dict[str, Any]]:
    """Replay every sample of ``minibatch`` with one predicted step, as one batched computation.

    Returns ``(all_pass, losses, rel_dE_list, metrics)``: ``losses`` (k,) per-sample band loss
    on the graph of the predictor; ``rel_dE_list`` (k,) the detached error of ``gate`` (default:
    the energy gate, |dE/E|; inf for a blown-up step); ``metrics`` with ``pass_count``,
    ``fail_count``, ``mean_rel_dE``, ``max_rel_dE``, ``batch_size`` and ``mean_dt`` (Python
    numbers). The minibatch is not modified.
    """
    out = predict_and_step(predictor, integrator, minibatch.state, minibatch.history, config,
                           predictor_name=predictor_name, gate=gate, gate_name=gate_name)
    passed = out.passed
    rel = out.rel_dE
    metrics: dict[str, Any] = {
        "pass_count": int(passed.sum()),
        "fail_count": int((~passed).sum()),
        "mean_rel_dE": float(rel.mean()) if rel.numel() else 0.0,
        "max_rel_dE": float(rel.max()) if rel.numel() else 0.0,
        "batch_size": int(rel.numel()),
        "mean_dt": float(out.dt.detach().mean()) if rel.numel() else 0.0,
    }
    return bool(passed.all()), out.losses, rel, metrics


def _no_samples() -> dict[str, Any]:
    """The :func:`evaluate_minibatch` metrics of an empty minibatch."""
    return {"pass_count": 0, "fail_count": 0, "mean_rel_dE": 0.0, "max_rel_dE": 0.0, "batch_size": 0, "mean_dt": 0.0}


def _empty_metrics(buffer_size: int, skipped: bool) -> dict[str, Any]:
    return {**_no_samples(), "loss": 0.0, "buffer_size": buffer_size, "skipped": skipped, "stopped": False}


def generalize_on_trajectory(
    predictor: DtPredictor,
    integrator: Integrator,
    buffer: ReplayBuffer,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    sampler_name: str = "uniform",
    epoch: int = 0,
    hook: Any = None,
    control: RunControl | None = None,
    predictor_name: str = "predictor",
    gate: Gate | None = None,
    gate_name: str | None = None,
    collective: Collective = LOCAL,
) -> tuple[bool, int, dict[str, Any]]:
    """Part 2: replay minibatches until one passes entirely, at most ``config.replay_steps`` times.

    Returns ``(converged, iterations, final_metrics)``. An empty buffer gives ``(True, 0, m)``
    and one shorter than ``config.min_replay_size`` gives ``(True, 0, m)`` with
    ``m["skipped"] = True``; reaching the cap gives ``(False, replay_steps, m)``.
    ``final_metrics`` holds the last minibatch's :func:`evaluate_minibatch` metrics plus
    ``loss`` (the objective of that iteration), ``buffer_size``, ``skipped`` and ``stopped``
    (True if ``control`` asked to stop; then ``converged`` is False). ``hook`` gets one
    ReplayIteration event per iteration. ``gate`` judges the replayed steps (default: the energy gate).

    With a data-parallel ``collective`` (:mod:`.distributed`) every rank replays a minibatch of
    its own buffer, the metrics and the objective are those of the union of the minibatches,
    and an iteration converges when every rank's minibatch passes; the buffer sizes in the
    metrics and the skip test are global sums.
    """
    n = int(collective.total([len(buffer)])[0])
    if n == 0 or n < config.min_replay_size:
        return True, 0, _empty_metrics(n, skipped=True)
    metrics = _empty_metrics(n, skipped=False)
    for iteration in range(1, config.replay_steps + 1):
        if control is not None:
            try:
                control.checkpoint()
            except RunStopped:
                metrics["stopped"] = True
                return False, iteration - 1, metrics
        losses: Tensor | None = None
        rel: Tensor | None = None
        evaluated = _no_samples()
        if len(buffer):  # always in one process; a data-parallel rank with an empty buffer joins with nothing
            batch = sample_minibatch(buffer, config.replay_batch_size, generator, sampler, sampler_name=sampler_name)
            _, losses, rel, evaluated = evaluate_minibatch(predictor, integrator, batch, config,
                                                           predictor_name=predictor_name, gate=gate,
                                                           gate_name=gate_name)
            buffer.update_rel_dE(batch.indices, rel)
        outcome = collective.round(losses, rel, config, predictor, evaluated)
        assert outcome.metrics is not None
        evaluated = outcome.metrics
        if outcome.objective.requires_grad and outcome.value > 0:
            optimizer_step(optimizer, outcome.objective, config.grad_clip, collective.reduce_gradients)
        metrics = {**metrics, **evaluated, "loss": outcome.value}
        if hook is not None:
            hook.nbtoolkit_replay_iteration(event=ReplayIteration(
                epoch=epoch, iteration=iteration, batch_size=evaluated["batch_size"], pass_count=evaluated["pass_count"],
                fail_count=evaluated["fail_count"], mean_rel_dE=evaluated["mean_rel_dE"],
                max_rel_dE=evaluated["max_rel_dE"], loss=metrics["loss"],
            ))
        if not outcome.any_failed:
            return True, iteration, metrics
    return False, config.replay_steps, metrics
