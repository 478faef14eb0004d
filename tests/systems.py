"""Small test systems built directly from arrays (independent of the presets)."""

from __future__ import annotations

import math

import torch

from nbtoolkit import NBodyState


def two_body_orbit(e: float = 0.5, a: float = 1.0, m1: float = 1.0, m2: float = 1.0, G: float = 1.0) -> tuple[NBodyState, float]:
    """A bound two-body orbit starting at pericentre in the centre-of-mass frame, and its period."""
    M = m1 + m2
    r = a * (1 - e)
    v = math.sqrt(G * M * (1 + e) / (a * (1 - e)))
    rel_x = torch.tensor([r, 0.0], dtype=torch.float64)
    rel_v = torch.tensor([0.0, v], dtype=torch.float64)
    pos = torch.stack([-m2 / M * rel_x, m1 / M * rel_x])
    vel = torch.stack([-m2 / M * rel_v, m1 / M * rel_v])
    period = 2 * math.pi * math.sqrt(a**3 / (G * M))
    return NBodyState.from_arrays([m1, m2], pos, vel, G=G), period


def random_cluster(batch: int, n: int, dim: int = 3, seed: int = 0, softening: float = 0.0) -> NBodyState:
    """Random bound-ish clusters with unequal masses, (B, N, D)."""
    g = torch.Generator().manual_seed(seed)
    mass = 0.5 + torch.rand(batch, n, generator=g, dtype=torch.float64)
    pos = torch.randn(batch, n, dim, generator=g, dtype=torch.float64)
    vel = 0.3 * torch.randn(batch, n, dim, generator=g, dtype=torch.float64)
    return NBodyState.from_arrays(mass, pos, vel, softening=softening)
