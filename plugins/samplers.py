"""Default replay samplers: ``uniform``, ``prioritized`` and ``recent``.

A sampler is ``sampler(buffer, batch_size, generator) -> LongTensor`` of distinct indices into
the replay buffer, at most ``min(batch_size, len(buffer))`` of them, drawn with the given
``torch.Generator`` so a seed reproduces the draw.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nbtoolkit import hookimpl
from nbtoolkit.errors import ConfigError
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


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be in [0, 1]; got {value}")
    return value


class UniformSampler:
    """Uniform without replacement (the original rule)."""

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        return uniform_indices(buffer, batch_size, generator)


class PrioritizedSampler:
    """Probability grows with the sample's last measured |dE/E|: p_i ∝ (1 - u) w_i / sum w + u / n
    with w_i = max(|dE/E|_i, 1e-16)^alpha (a blown-up step counts as |dE/E| = 1) and u =
    ``uniform_mix`` the share spread evenly, so every sample stays reachable."""

    def __init__(self, alpha: float = 0.5, uniform_mix: float = 0.1) -> None:
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"alpha must be finite and > 0; got {alpha}")
        self.alpha = alpha
        self.uniform_mix = _fraction("uniform_mix", uniform_mix)

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        rel = buffer.rel_dE
        rel = torch.where(torch.isfinite(rel), rel, torch.ones_like(rel)).clamp(PRIORITY_FLOOR, 1.0)
        w = rel.pow(self.alpha)
        p = (1 - self.uniform_mix) * w / w.sum() + self.uniform_mix / rel.numel()
        return _draw(p, batch_size, generator)


class RecentSampler:
    """Favours the newest samples: weight 2^(-age / half_life), age = samples added since (0 for the newest)."""

    def __init__(self, half_life: float = 1000.0) -> None:
        half_life = float(half_life)
        if not (math.isfinite(half_life) and half_life > 0):
            raise ConfigError(f"half_life must be finite and > 0; got {half_life}")
        self.half_life = half_life

    def __call__(self, buffer: ReplayBuffer, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        log_w = -math.log(2.0) * buffer.age.to(torch.float64) / self.half_life
        w = (log_w - log_w.max()).exp().clamp_min(1e-300)  # keep every weight > 0 so k draws always exist
        return _draw(w, batch_size, generator)


@hookimpl
def nbtoolkit_register_replay_samplers(register) -> None:
    register("uniform", UniformSampler)
    register("prioritized", PrioritizedSampler)
    register("recent", RecentSampler)
