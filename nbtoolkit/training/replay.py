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

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..contracts import DtPredictor, Gate, History, Integrator, Sampler, checked_sample
from ..events import ReplayIteration
from ..state import NBodyState
from .buffer import ReplayBuffer
from .config import TrainConfig
from .context import LoopContext
from .steps import optimizer_step, predict_and_step

__all__ = ["Minibatch", "ReplayOutcome", "Sampler", "evaluate_minibatch", "generalize_on_trajectory", "sample_minibatch",
           "uniform_indices"]


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
                     sampler: Sampler | None = None) -> Minibatch:
    """Draw a minibatch of at most ``batch_size`` distinct samples (capped at the buffer size).

    ``sampler`` picks the indices (default: uniform without replacement, the seed's rule);
    its answer is checked (:func:`nbtoolkit.contracts.sampler.checked_sample`): a 1-D tensor of
    distinct in-range indices, no more than asked for.
    """
    n = len(buffer)
    k = min(int(batch_size), n)
    if k <= 0:
        idx = torch.zeros(0, dtype=torch.long, device=buffer.device)
    elif sampler is None:
        idx = uniform_indices(buffer, k, generator)
    else:
        idx = checked_sample(sampler, buffer, k, generator)
    state, history = buffer.gather(idx)
    return Minibatch(indices=idx, state=state, history=history, dt=buffer.dt[idx].clone())


def evaluate_minibatch(predictor: DtPredictor, integrator: Integrator, minibatch: Minibatch, config: TrainConfig,
                       *, gate: Gate | None = None) -> tuple[bool, Tensor, Tensor, dict[str, Any]]:
    """Replay every sample of ``minibatch`` with one predicted step, as one batched computation.

    Returns ``(all_pass, losses, rel_dE_list, metrics)``: ``losses`` (k,) per-sample band loss
    on the graph of the predictor; ``rel_dE_list`` (k,) the detached error of ``gate`` (default:
    the energy gate, |dE/E|; inf for a blown-up step); ``metrics`` with ``pass_count``,
    ``fail_count``, ``mean_rel_dE``, ``max_rel_dE``, ``batch_size`` and ``mean_dt`` (Python
    numbers). The minibatch is not modified.
    """
    out = predict_and_step(predictor, integrator, minibatch.state, minibatch.history, config, gate=gate)
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


@dataclass(frozen=True)
class ReplayOutcome:
    """What :func:`generalize_on_trajectory` did.

    ``converged``: the last minibatch passed the gate entirely (also True when Part 2 was
    skipped); ``iterations``: minibatches replayed; ``skipped``: the buffer held fewer than
    ``min_replay_size`` samples (none replayed); ``stopped``: a stop request ended it (then
    ``converged`` is False); ``buffer_size``: samples in the buffer. The rest describes the
    last minibatch (zeros when none was replayed): ``loss``, the objective of that iteration;
    ``batch_size``, ``pass_count`` and ``fail_count`` samples; ``mean_rel_dE`` and
    ``max_rel_dE``, the gate's error; ``mean_dt``, the predicted dt. In data-parallel training
    all of them are global (over the union of the ranks' minibatches and buffers).
    """

    converged: bool
    iterations: int
    skipped: bool
    stopped: bool
    buffer_size: int
    loss: float = 0.0
    batch_size: int = 0
    pass_count: int = 0
    fail_count: int = 0
    mean_rel_dE: float = 0.0
    max_rel_dE: float = 0.0
    mean_dt: float = 0.0

    @property
    def pass_rate(self) -> float:
        """Passing share of the last minibatch (1.0 when none was replayed)."""
        evaluated = self.pass_count + self.fail_count
        return self.pass_count / evaluated if evaluated else 1.0


def generalize_on_trajectory(loop: LoopContext, buffer: ReplayBuffer, *, epoch: int = 0) -> ReplayOutcome:
    """Part 2: replay minibatches of ``buffer`` until one passes entirely, at most ``config.replay_steps`` times.

    ``loop`` holds the predictor, integrator, optimizer, gate, sampler and replay RNG, event
    hook, control and collective (:class:`~nbtoolkit.training.context.LoopContext`); ``epoch``
    numbers the events. An empty buffer, or one shorter than ``config.min_replay_size``, gives
    ``converged=True, iterations=0, skipped=True``; reaching the cap gives ``converged=False,
    iterations=replay_steps``; a stop request (``loop.control``) gives ``stopped=True`` and
    ``converged=False``. ``loop.hook`` gets one ReplayIteration event per iteration.

    With a data-parallel ``loop.collective`` (:mod:`.distributed`) every rank replays a
    minibatch of its own buffer, the figures and the objective are those of the union of the
    minibatches, and an iteration converges when every rank's minibatch passes; the buffer
    size and the skip test are global sums.
    """
    cfg, collective = loop.config, loop.collective
    n = int(collective.total([len(buffer)])[0])
    if n == 0 or n < cfg.min_replay_size:
        return ReplayOutcome(converged=True, iterations=0, skipped=True, stopped=False, buffer_size=n)
    last = ReplayOutcome(converged=False, iterations=0, skipped=False, stopped=False, buffer_size=n)
    for iteration in range(1, cfg.replay_steps + 1):
        if loop.stop_requested():
            return replace(last, iterations=iteration - 1, stopped=True)
        losses: Tensor | None = None
        rel: Tensor | None = None
        evaluated = _no_samples()
        if len(buffer):  # always in one process; a data-parallel rank with an empty buffer joins with nothing
            batch = sample_minibatch(buffer, cfg.replay_batch_size, loop.generator, loop.sampler)
            _, losses, rel, evaluated = evaluate_minibatch(loop.predictor, loop.integrator, batch, cfg, gate=loop.gate)
            buffer.update_rel_dE(batch.indices, rel)
        outcome = collective.round(losses, rel, cfg, loop.predictor, evaluated)
        assert outcome.metrics is not None
        if outcome.objective.requires_grad and outcome.value > 0:
            optimizer_step(loop.optimizer, outcome.objective, cfg.grad_clip, collective.reduce_gradients)
        last = ReplayOutcome(converged=not outcome.any_failed, iterations=iteration, skipped=False, stopped=False,
                             buffer_size=n, loss=outcome.value, **outcome.metrics)
        if loop.hook is not None:
            loop.hook.nbtoolkit_replay_iteration(event=ReplayIteration(
                epoch=epoch, iteration=iteration, batch_size=last.batch_size, pass_count=last.pass_count,
                fail_count=last.fail_count, mean_rel_dE=last.mean_rel_dE, max_rel_dE=last.max_rel_dE, loss=last.loss,
            ))
        if last.converged:
            return last
    return last
