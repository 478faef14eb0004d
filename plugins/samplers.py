"""Default replay samplers: ``uniform``, ``prioritized`` and ``recent``.

A sampler is ``sampler(buffer, batch_size, generator) -> LongTensor`` of distinct indices into
the replay buffer, at most ``min(batch_size, len(buffer))`` of them, drawn with the given
``torch.Generator`` so a seed reproduces the draw.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.options import Option, check_arguments, number
from nbtoolkit.training.buffer import ReplayBuffer
from nbtoolkit.training.replay import uniform_indices

#: |dE/E| below this counts as this (round-off) when computing priorities
PRIORITY_FLOOR = 1e-16


def _draw(weights: Tensor, batch_size: int, generator: torch.Generator | None) -> Tensor:
    """Distinct indices drawn without replacement with probabilities proportional to ``weights`` (n,) > 0."""
    k = min(batch_size, int(weights.numel()))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=weights.device)
    return torch.multinomial(weights.cpu(), k, replacement=False, generator=generator).to(weights.device)


class UniformSampler:
    """Uniform without replacement (the original rule)."""

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return uniform_indices(buffer, batch_size, generator)


class PrioritizedSampler:
    """Probability grows with the sample's last measured |dE/E|: p_i ∝ (1 - u) w_i / sum w + u / n
    with w_i = max(|dE/E|_i, 1e-16)^alpha (a blown-up step counts as |dE/E| = 1) and u =
    ``uniform_mix`` the share spread evenly, so every sample stays reachable."""

    def __init__(
        self,
        alpha: Annotated[float, Option("exponent of |dE/E| in the weights (larger: favour the worst samples more)",
                                       number(0.0))] = 0.5,
        uniform_mix: Annotated[float, Option("share of the probability spread evenly over all samples",
                                             number(0.0, strict=False, high=1.0, high_strict=False))] = 0.1,
    ) -> None:
        checked = check_arguments(PrioritizedSampler, alpha=alpha, uniform_mix=uniform_mix)
        self.alpha, self.uniform_mix = checked["alpha"], checked["uniform_mix"]

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        rel = buffer.rel_dE
        rel = torch.where(torch.isfinite(rel), rel, torch.ones_like(rel)).clamp(PRIORITY_FLOOR, 1.0)
        w = rel.pow(self.alpha)
        p = (1 - self.uniform_mix) * w / w.sum() + self.uniform_mix / rel.numel()
        return _draw(p, batch_size, generator)


class RecentSampler:
    """Favours the newest samples: weight 2^(-age / half_life), age = samples added since (0 for the newest)."""

    def __init__(self, half_life: Annotated[float, Option("age, in samples added, at which a sample's weight halves",
                                                          number(0.0))] = 1000.0) -> None:
        self.half_life = check_arguments(RecentSampler, half_life=half_life)["half_life"]

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        log_w = -math.log(2.0) * buffer.age.to(torch.float64) / self.half_life
        w = (log_w - log_w.max()).exp().clamp_min(1e-300)  # keep every weight > 0 so k draws always exist
        return _draw(w, batch_size, generator)


@hookimpl
def nbtoolkit_register_replay_samplers(register) -> None:
    register("uniform", UniformSampler)
    register("prioritized", PrioritizedSampler)
    register("recent", RecentSampler)
