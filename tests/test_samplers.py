"""Replay samplers: distinct indices, capped, reproducible under a seed, and biased as documented."""

from __future__ import annotations

import pytest
import torch
from systems import random_cluster

from nbtoolkit.errors import OptionError, PluginError
from nbtoolkit.training import ReplayBuffer

SAMPLERS = ["uniform", "prioritized", "recent"]


def filled_buffer(n: int, rel_dE: torch.Tensor | None = None) -> ReplayBuffer:
    state = random_cluster(n, 3, dim=2)
    buf = ReplayBuffer.like(state, capacity=10_000)
    rel = torch.full((n,), 1e-6, dtype=torch.float64) if rel_dE is None else rel_dE
    buf.add(state, torch.full((n,), 0.01, dtype=torch.float64), rel)
    return buf


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", SAMPLERS)
def test_distinct_in_range_and_capped(host, name):
    sampler = host.samplers.create(name)
    buf = filled_buffer(50)
    idx = sampler(buf, 20, gen())
    assert idx.dtype == torch.long and idx.shape == (20,)
    assert torch.unique(idx).numel() == 20
    assert int(idx.min()) >= 0 and int(idx.max()) < 50
    everything = sampler(buf, 512, gen())  # batch larger than the buffer: capped, each sample once
    assert sorted(everything.tolist()) == list(range(50))


@pytest.mark.parametrize("name", SAMPLERS)
def test_seeded_draws_repeat_and_different_seeds_differ(host, name):
    sampler = host.samplers.create(name)
    buf = filled_buffer(200)
    assert torch.equal(sampler(buf, 30, gen(7)), sampler(buf, 30, gen(7)))
    assert not torch.equal(sampler(buf, 30, gen(7)), sampler(buf, 30, gen(8)))


def test_prioritized_prefers_samples_with_large_energy_error(host):
    rel = torch.full((100,), 1e-8, dtype=torch.float64)
    rel[:10] = 1e-3  # ten failing samples
    rel[10] = float("inf")  # a blown-up one counts as the largest error
    buf = filled_buffer(100, rel)
    sampler = host.samplers.create("prioritized", alpha=0.5, uniform_mix=0.1)
    g = gen(1)
    hits = torch.zeros(100)
    for _ in range(200):
        hits[sampler(buf, 5, g)] += 1
    assert hits[:11].mean() > 10 * hits[11:].mean()
    assert hits[11:].sum() > 0  # the uniform share keeps every sample reachable


def test_prioritized_with_equal_errors_is_uniform_in_distribution(host):
    buf = filled_buffer(40)
    sampler = host.samplers.create("prioritized")
    g = gen(2)
    hits = torch.zeros(40)
    for _ in range(400):
        hits[sampler(buf, 4, g)] += 1
    assert hits.min() > 10 and hits.max() < 80  # expected 40 each


def test_recent_prefers_newest_samples(host):
    buf = filled_buffer(1000)
    sampler = host.samplers.create("recent", half_life=50)
    idx = sampler(buf, 50, gen(3))
    ages = buf.age[idx]
    assert float(ages.float().median()) < 150
    assert int(buf.age.argmin()) == 999  # age counts from the newest sample


def test_recent_ages_follow_the_ring_after_wraparound():
    state = random_cluster(8, 2, dim=2)
    buf = ReplayBuffer.like(state, capacity=5)
    one = torch.ones(8, dtype=torch.float64)
    buf.add(state, one, one)  # 8 samples into 5 slots: the newest 5 kept
    assert len(buf) == 5
    assert sorted(buf.age.tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(buf.gather(torch.tensor([int(buf.age.argmin())]))[0].position, state.position[7:8])


def test_bad_options_are_errors(host):
    with pytest.raises(PluginError, match="uniform_mix"):
        host.samplers.create("prioritized", uniform_mix=2.0)
    with pytest.raises(PluginError, match="half_life"):
        host.samplers.create("recent", half_life=0)


@pytest.mark.parametrize("name, options, refusal", [
    ("prioritized", {"alpha": 0}, "option 'alpha' of replay sampler 'prioritized' .* must be finite and > 0; got 0.0"),
    ("prioritized", {"uniform_mix": -0.1}, "option 'uniform_mix' .* must be finite and >= 0 and <= 1; got -0.1"),
    ("prioritized", {"uniform_mix": "half"}, "option 'uniform_mix' .* must be a number; got 'half'"),
    ("recent", {"half_life": float("nan")}, r"option 'half_life' of replay sampler 'recent' \(plugin 'plugins.samplers'\)"),
])
def test_the_declarations_refuse_bad_values_naming_the_sampler_and_its_option(host, name, options, refusal):
    with pytest.raises(OptionError, match=refusal):
        host.samplers.create(name, **options)


def test_the_ends_of_uniform_mix_are_accepted(host):
    assert [host.samplers.create("prioritized", uniform_mix=u).uniform_mix for u in (0, 1)] == [0.0, 1.0]
