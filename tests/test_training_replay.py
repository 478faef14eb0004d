"""Part 2: minibatch sampling, batched evaluation (equal to one-by-one), generalization loop."""

from __future__ import annotations

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import NBodyState
from nbtoolkit.control import RunControl
from nbtoolkit.errors import PluginError
from nbtoolkit.training import (
    LoopContext,
    Minibatch,
    ReplayBuffer,
    ReplayOutcome,
    TrainConfig,
    collect_trajectory,
    evaluate_minibatch,
    generalize_on_trajectory,
    sample_minibatch,
)

METRIC_KEYS = {"pass_count", "fail_count", "mean_rel_dE", "max_rel_dE"}


def mlp(host, **options):
    options.setdefault("hidden_width", 8)
    options.setdefault("hidden_layers", 1)
    options.setdefault("seed", 0)
    return host.predictors.create("mlp", **options)


def collected(host, history_len: int = 0, steps: int = 30) -> ReplayBuffer:
    """A real trajectory: three Kepler orbits collected in Part 1 with a safe, small dt."""
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, history_len=history_len, init_factor=0.03)
    state = NBodyState.cat([two_body_orbit(e=e)[0] for e in (0.3, 0.6, 0.9)])
    cfg = TrainConfig(steps_per_epoch=steps, efficiency_weight=0.0)
    return collect_trajectory(LoopContext(pred, leap, cfg, torch.optim.Adam(pred.parameters())), state).buffer


def snapshot(buffer: ReplayBuffer) -> tuple[torch.Tensor, ...]:
    state, history = buffer.gather(torch.arange(len(buffer)))
    parts = (state.mass, state.position, state.velocity, state.time, buffer.dt.clone())
    return parts + (() if history is None else (history.position, history.velocity, history.mask))


# ----------------------------------------------------------------------------- sampling
def test_minibatch_size_cap_and_no_duplicates(host):
    buf = collected(host)
    n = len(buf)
    batch = sample_minibatch(buf, 16, torch.Generator().manual_seed(0))
    assert isinstance(batch, Minibatch) and len(batch) == 16 and batch.state.batch_size == 16
    assert torch.unique(batch.indices).numel() == 16
    capped = sample_minibatch(buf, 512, torch.Generator().manual_seed(0))
    assert len(capped) == n and sorted(capped.indices.tolist()) == list(range(n))
    assert torch.equal(batch.state.position, buf.gather(batch.indices)[0].position)
    assert torch.equal(batch.dt, buf.dt[batch.indices])


def test_minibatch_is_random_and_reproducible_under_a_seed(host):
    buf = collected(host)
    g = torch.Generator().manual_seed(11)
    first, second = sample_minibatch(buf, 10, g), sample_minibatch(buf, 10, g)
    assert not torch.equal(first.indices, second.indices)
    again = sample_minibatch(buf, 10, torch.Generator().manual_seed(11))
    assert torch.equal(first.indices, again.indices)


def test_a_sampler_breaking_its_contract_is_reported_by_name(host):
    buf = collected(host, steps=5)

    def twice(buffer, k, generator):
        return torch.tensor([0, 0, 1])

    def wide(buffer, k, generator):
        return torch.tensor([0, 99])

    with pytest.raises(PluginError, match=r"replay sampler \S*twice \(function .*not built by a plugin registry\) "
                                          "returned duplicate"):
        sample_minibatch(buf, 4, None, twice)
    with pytest.raises(PluginError, match="wide.*outside"):
        sample_minibatch(buf, 4, None, wide)
    with pytest.raises(PluginError, match="<lambda>.*raised ZeroDivisionError when called: division by zero"):
        sample_minibatch(buf, 4, None, lambda buffer, k, generator: 1 / 0)


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_minibatch_structure_metrics_and_immutability(host):
    buf = collected(host)
    before = snapshot(buf)
    batch = sample_minibatch(buf, 20, torch.Generator().manual_seed(1))
    pred = mlp(host, init_factor=0.4)  # large dt: some samples fail
    all_pass, losses, rel, metrics = evaluate_minibatch(pred, host.integrators.create("leapfrog"), batch, TrainConfig())
    assert isinstance(all_pass, bool) and all_pass is False
    assert losses.shape == (20,) and losses.grad_fn is not None
    assert rel.shape == (20,) and not rel.requires_grad
    assert METRIC_KEYS <= set(metrics)
    assert metrics["pass_count"] + metrics["fail_count"] == 20 and metrics["fail_count"] >= 1
    assert metrics["fail_count"] == int((rel > 2e-4).sum())
    assert metrics["max_rel_dE"] == pytest.approx(float(rel.max()))
    assert metrics["mean_rel_dE"] == pytest.approx(float(rel.mean()))
    in_band = (rel >= 1e-6) & (rel <= 1e-4)
    assert bool((losses.detach()[in_band] == 0).all()) and bool((losses.detach()[rel > 2e-4] > 0).all())
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(buf)))


@pytest.mark.parametrize("history_len", [0, 2])
def test_batched_evaluation_equals_one_by_one(host, history_len):
    buf = collected(host, history_len=history_len, steps=12)
    pred = mlp(host, history_len=history_len, init_factor=0.1, fourier_features=2)
    with torch.no_grad():  # make the history inputs matter
        for p in pred.parameters():
            p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(4)))
    leap = host.integrators.create("leapfrog")
    cfg = TrainConfig()
    batch = sample_minibatch(buf, 512, torch.Generator().manual_seed(2))
    _, losses, rel, _ = evaluate_minibatch(pred, leap, batch, cfg)
    single_rel, single_loss = [], []
    for i in batch.indices.tolist():
        state, history = buf.gather(torch.tensor([i]))
        one = Minibatch(torch.tensor([i]), state, history, buf.dt[[i]])
        _, l1, r1, _ = evaluate_minibatch(pred, leap, one, cfg)
        single_rel.append(r1)
        single_loss.append(l1.detach())
    assert torch.allclose(rel, torch.cat(single_rel), rtol=1e-8, atol=1e-15)
    assert torch.allclose(losses.detach(), torch.cat(single_loss), rtol=1e-6, atol=1e-12)


def test_each_sample_is_replayed_with_its_own_history(host):
    buf = collected(host, history_len=2, steps=8)
    pred = mlp(host, history_len=2)
    with torch.no_grad():
        for p in pred.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(5)))
    batch = sample_minibatch(buf, 6, torch.Generator().manual_seed(3))
    own = pred(batch.state, batch.history)
    current = pred(batch.state, None)  # what replaying with an empty / current window would give
    assert bool(batch.history.mask.all()) and not torch.allclose(own, current)
    out = evaluate_minibatch(pred, host.integrators.create("leapfrog"), batch, TrainConfig())
    assert out[3]["mean_dt"] == pytest.approx(float(own.detach().mean()), rel=1e-12)


def test_batched_evaluation_on_a_plummer_cluster_equals_one_by_one(host):
    state = random_cluster(6, 8, softening=0.01)
    buf = ReplayBuffer.like(state, 100)
    buf.add(state, torch.full((6,), 1e-3, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))
    pred = mlp(host, init_factor=0.05)
    leap = host.integrators.create("leapfrog")
    batch = sample_minibatch(buf, 6, torch.Generator().manual_seed(0))
    rel = evaluate_minibatch(pred, leap, batch, TrainConfig())[2]
    for k, i in enumerate(batch.indices.tolist()):
        s, _ = buf.gather(torch.tensor([i]))
        r1 = evaluate_minibatch(pred, leap, Minibatch(torch.tensor([i]), s, None, buf.dt[[i]]), TrainConfig())[2]
        assert torch.allclose(rel[k:k + 1], r1, rtol=1e-8, atol=1e-15)


# ----------------------------------------------------------------------------- generalization
def test_generalize_on_empty_trajectory_returns_true_zero(host):
    buf = ReplayBuffer(10, 2, 2)
    pred = mlp(host)
    out = generalize_on_trajectory(
        LoopContext(pred, host.integrators.create("leapfrog"), TrainConfig(), torch.optim.Adam(pred.parameters())), buf)
    assert isinstance(out, ReplayOutcome)
    assert (out.converged, out.iterations, out.skipped, out.buffer_size, out.batch_size) == (True, 0, True, 0, 0)


def test_generalize_below_min_replay_size_is_skipped(host):
    buf = collected(host, steps=1)  # 3 samples
    pred = mlp(host, init_factor=0.5)
    out = generalize_on_trajectory(LoopContext(pred, host.integrators.create("leapfrog"), TrainConfig(min_replay_size=4),
                                               torch.optim.Adam(pred.parameters())), buf)
    assert (out.converged, out.iterations, out.skipped, out.buffer_size) == (True, 0, True, 3)


def test_generalize_stops_at_the_replay_steps_cap(host):
    buf = collected(host, steps=10)
    pred = mlp(host, init_factor=0.5)  # fails and cannot learn with this learning rate
    events = []

    class Hook:
        def nbtoolkit_replay_iteration(self, event):
            events.append(event)

    out = generalize_on_trajectory(LoopContext(
        pred, host.integrators.create("leapfrog"), TrainConfig(replay_steps=3, replay_batch_size=8),
        torch.optim.Adam(pred.parameters(), lr=1e-12), generator=torch.Generator().manual_seed(0), hook=Hook()), buf)
    assert (out.converged, out.iterations, out.stopped) == (False, 3, False)
    assert out.fail_count >= 1 and out.skipped is False and out.batch_size == 8 and out.pass_rate < 1
    assert (out.fail_count, out.loss) == (events[-1].fail_count, events[-1].loss)
    assert [e.iteration for e in events] == [1, 2, 3] and all(e.batch_size == 8 for e in events)


def test_generalize_ends_on_a_stop_request_before_replaying(host, events):
    buf = collected(host, steps=5)
    pred = mlp(host, init_factor=0.5)
    control = RunControl()
    control.stop()
    out = generalize_on_trajectory(LoopContext(pred, host.integrators.create("leapfrog"), TrainConfig(),
                                               torch.optim.Adam(pred.parameters()), hook=events, control=control), buf)
    assert (out.stopped, out.converged, out.iterations, out.skipped, out.buffer_size) == (True, False, 0, False, 15)
    assert events.of("ReplayIteration") == []


def test_generalize_converges_on_a_real_trajectory_and_leaves_it_unchanged(host):
    buf = collected(host, steps=30)
    before = snapshot(buf)
    pred = mlp(host, init_factor=0.3)
    leap = host.integrators.create("leapfrog")
    cfg = TrainConfig(replay_batch_size=32, replay_steps=400, efficiency_weight=0.0)
    start = evaluate_minibatch(pred, leap, sample_minibatch(buf, 512), cfg)
    assert start[3]["fail_count"] > 10
    out = generalize_on_trajectory(LoopContext(pred, leap, cfg, torch.optim.Adam(pred.parameters(), lr=3e-2),
                                               generator=torch.Generator().manual_seed(0)), buf)
    assert out.converged and 1 < out.iterations < 400
    assert out.fail_count == 0 and out.pass_rate == 1.0 and out.max_rel_dE <= cfg.energy_threshold
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(buf)))
    # the last measured errors are kept for the samplers
    assert float(buf.rel_dE.max()) > 0
