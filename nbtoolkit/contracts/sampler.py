"""The replay-sampler contract that plugins implement, and its run-time check.

A sampler picks which stored samples Part 2 of training replays: a callable
``sampler(buffer, batch_size, generator) -> LongTensor`` of distinct indices into the replay
buffer (:class:`~nbtoolkit.training.buffer.ReplayBuffer`), 1 to ``batch_size`` of them, drawn
with the given ``torch.Generator`` (not the global RNG) so that a seed reproduces the run. It
reads the buffer's per-sample tensors and never modifies them. Any callable with that signature
is a sampler (a class with ``__call__``, a function); :class:`Sampler` states the signature for
type checkers. Every answer goes through :func:`checked_sample`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ..errors import PluginError
from ..registry import describe
from .calls import call_plugin

if TYPE_CHECKING:
    from ..training.buffer import ReplayBuffer


class Sampler(Protocol):
    """``sampler(buffer, batch_size, generator) -> LongTensor`` (k,) of distinct indices into
    ``buffer``, 1 <= k <= ``batch_size`` (already capped at ``len(buffer)``)."""

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        ...


def checked_sample(sampler: Sampler, buffer: ReplayBuffer, batch_size: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """``sampler(buffer, batch_size, generator)``, checked: an exception, or an answer that is not a
    1-D long tensor of 1 to ``batch_size`` distinct indices in [0, len(buffer)), is a
    :class:`~nbtoolkit.errors.PluginError` naming the sampler and its plugin."""
    idx = call_plugin(sampler, "replay sampler", "when called", lambda: sampler(buffer, batch_size, generator))
    problem = indices_problem(idx, len(buffer), batch_size)
    if problem is not None:
        raise PluginError(f"{describe(sampler, 'replay sampler')} {problem}")
    return idx


def indices_problem(idx: Any, n: int, k: int) -> str | None:
    """What is wrong with ``idx`` as a sampler's answer for ``k`` of ``n`` samples, or None if nothing."""
    if not isinstance(idx, Tensor) or idx.dim() != 1 or idx.dtype != torch.long:
        shape = tuple(idx.shape) if isinstance(idx, Tensor) else type(idx).__name__
        return f"must return a 1-D LongTensor of indices; got {shape}"
    if idx.numel() == 0 or idx.numel() > k:
        return f"returned {idx.numel()} indices; expected 1 to {k}"
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        return f"returned an index outside [0, {n})"
    if torch.unique(idx).numel() != idx.numel():
        return "returned duplicate indices"
    return None
