"""Part 1 (trajectory collection) and the single-step primitives it is built from."""

from __future__ import annotations

import math

import pytest
import torch
from systems import two_body_orbit

from nbtoolkit import Integrator, NBodyState, state_energy
from nbtoolkit.control import RunControl
from nbtoolkit.training import (
    LoopContext,
    RetrainLimitError,
    TrainConfig,
    attempt_single_step,
    check_energy_threshold,
    collect_trajectory,
    compute_single_step_loss,
)
from nbtoolkit.training.steps import predict_and_step


def orbits(*eccentricities: float) -> NBodyState:
    """Kepler orbits starting at pericentre, batched."""
    return NBodyState.cat([two_body_orbit(e=e)[0] for e in eccentricities])


def mlp(host, **options):
    options.setdefault("hidden_width", 8)
    options.setdefault("hidden_layers", 1)
    options.setdefault("seed", 0)
    return host.predictors.create("mlp", **options)


def adam(pred, lr=1e-2):
    return torch.optim.Adam(pred.parameters(), lr=lr)


def loop(pred, integrator, cfg, optimizer, **parts):
    return LoopContext(pred, integrator, cfg, optimizer, **parts)


# ----------------------------------------------------------------------------- primitives
def test_attempt_single_step_never_mutates_and_advances_time(host):
    leap = host.integrators.create("leapfrog")
    state = orbits(0.5, 0.7)
    before = state.clone()
    dt = torch.tensor([0.01, 0.02], dtype=torch.float64, requires_grad=True)
    new = attempt_single_step(leap, state, dt, n_steps=3)
    assert torch.equal(state.position, before.position) and torch.equal(state.velocity, before.velocity)
    assert torch.allclose(new.time, torch.tensor([0.03, 0.06], dtype=torch.float64))
    new.position.sum().backward()
    assert dt.grad is not None and bool((dt.grad != 0).all())


def test_check_energy_threshold_returns_pass_flags_and_errors(host):
    leap = host.integrators.create("leapfrog")
    state = orbits(0.9, 0.9)
    new = leap.step(state, torch.tensor([1e-4, 0.05], dtype=torch.float64))
    passed, rel = check_energy_threshold(state, new, 2e-4)
    expected = ((state_energy(new) - state_energy(state)) / state_energy(state)).abs()
    assert torch.allclose(rel, expected)
    assert passed.tolist() == [True, False]


def test_band_loss_is_zero_inside_and_squared_log_distance_outside():
    cfg = TrainConfig()
    rel = torch.tensor([1e-5, 1e-6, 1e-4, 1e-2, 1e-8], dtype=torch.float64)
    loss = compute_single_step_loss(rel, cfg)
    assert loss[:3].tolist() == [0.0, 0.0, 0.0]
    assert math.isclose(float(loss[3]), math.log(100) ** 2, rel_tol=1e-12)
    assert math.isclose(float(loss[4]), math.log(100) ** 2, rel_tol=1e-12)


def test_nonfinite_error_costs_a_finite_penalty_with_a_gradient_that_shrinks_dt():
    cfg = TrainConfig(nonfinite_penalty=50.0)
    dt = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    rel = torch.tensor([float("inf"), float("nan"), 1e-3], dtype=torch.float64)
    loss = compute_single_step_loss(rel, cfg, dt)
    assert loss[:2].tolist() == [50.0, 50.0]
    loss.sum().backward()
    assert bool(torch.isfinite(dt.grad).all()) and bool((dt.grad[:2] > 0).all())  # descent lowers dt


class ExplodingLeapfrog(Integrator):
    """Leapfrog whose step of system 1 blows up to -inf positions, with an infinite derivative in dt."""

    order = 2

    def __init__(self, leapfrog: Integrator) -> None:
        self.leapfrog = leapfrog

    def step(self, state: NBodyState, dt: torch.Tensor) -> NBodyState:
        new = self.leapfrog.step(state, dt)
        sel = torch.zeros_like(dt)
        sel[1] = 1.0
        blow = torch.log((dt - dt.detach()) * sel + (1 - sel))  # 0 for system 0, -inf for system 1
        return new.replace(position=new.position + blow[:, None, None])


def test_blown_up_step_gives_finite_gradients_through_the_integrator(host, monkeypatch):
    """A step whose energy is not finite must not poison the predictor's gradients (torch.where trap).

    The contract check would (rightly) name this artificial integrator as faulty, so it is
    bypassed here: this test is about the loss, not about the plugin."""
    import nbtoolkit.training.steps as steps

    monkeypatch.setattr(steps, "checked_step", lambda integrator, state, dt: integrator.step(state, dt))
    integrator = ExplodingLeapfrog(host.integrators.create("leapfrog"))
    pred = mlp(host)
    cfg = TrainConfig()
    out = predict_and_step(pred, integrator, orbits(0.5, 0.5), None, cfg)
    assert math.isfinite(float(out.rel_dE[0])) and not math.isfinite(float(out.rel_dE[1]))
    assert out.passed.tolist() == [True, False]
    assert float(out.losses.detach()[1]) == cfg.nonfinite_penalty
    out.losses.sum().backward()
    grads = [p.grad for p in pred.parameters()]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


# ----------------------------------------------------------------------------- Part 1
def test_retraining_lowers_rel_dE_until_the_step_is_accepted(host, events):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.5)  # far too large a dt at pericentre of e = 0.9
    cfg = TrainConfig(steps_per_epoch=1, max_retrain_steps=500, efficiency_weight=0.0)
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred, 3e-2), hook=events), orbits(0.9))
    rejected, accepted = events.of("StepRejected"), events.of("StepAccepted")
    assert len(rejected) >= 3 and len(accepted) == 1
    first, last = rejected[0], rejected[-1]
    assert first.rel_dE[0] > cfg.energy_threshold
    assert last.rel_dE[0] < first.rel_dE[0] and last.dt[0] < first.dt[0]
    assert accepted[0].rel_dE[0] <= cfg.energy_threshold and accepted[0].dt[0] < last.dt[0]
    assert int(accepted[0].retrains[0]) == len(rejected) == res.retrains
    assert [e.attempt for e in rejected] == list(range(1, len(rejected) + 1))
    assert len(res.buffer) == 1 and float(res.buffer.rel_dE[0]) <= cfg.energy_threshold


def test_passing_systems_advance_and_only_failing_ones_are_retried(host, events):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.2)  # passes for the circular orbit, fails at pericentre of e = 0.9
    cfg = TrainConfig(steps_per_epoch=1, efficiency_weight=0.0)
    start = orbits(0.0, 0.9)
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred, 3e-2), hook=events), start)
    accepted = events.of("StepAccepted")
    assert accepted[0].systems.tolist() == [0] and accepted[0].retrains.tolist() == [0]
    assert all(e.systems.tolist() == [1] for e in events.of("StepRejected"))
    assert res.accepted.tolist() == [1, 1] and res.rejected[0] == 0 and res.rejected[1] >= 1
    assert bool((res.state.time > start.time).all())
    assert sorted(res.buffer.system.tolist()) == [0, 1]


def test_collects_steps_per_epoch_accepted_steps_per_system(host):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.02)
    cfg = TrainConfig(steps_per_epoch=6)
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred)), orbits(0.3, 0.6, 0.8))
    assert res.accepted.tolist() == [6, 6, 6] and len(res.buffer) == 18
    assert bool((res.buffer.rel_dE <= cfg.energy_threshold).all())
    # the buffer holds the pre-step states: time of each system's samples increases from 0
    for b in range(3):
        times = res.buffer.gather(torch.nonzero(res.buffer.system == b).squeeze(1))[0].time
        assert float(times[0]) == 0.0 and bool((times.diff() > 0).all())


def test_warmup_steps_are_not_recorded_with_history(host):
    leap = host.integrators.create("leapfrog")
    K = 3
    pred = mlp(host, history_len=K, init_factor=0.02)
    cfg = TrainConfig(steps_per_epoch=10)
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred)), orbits(0.4, 0.7))
    assert res.accepted.tolist() == [10, 10]
    assert len(res.buffer) == 2 * (10 - K)  # the first K accepted steps of each system are warmup
    state, history = res.buffer.gather(torch.arange(len(res.buffer)))
    assert bool(history.mask.all())
    # each sample's own window: its newest history entry is the previous accepted state of that system
    for b in range(2):
        rows = torch.nonzero(res.buffer.system == b).squeeze(1)
        assert torch.equal(history.position[rows[1:], -1], state.position[rows[:-1]])
    # collection continued with the returned history: no second warmup
    again = collect_trajectory(loop(pred, leap, cfg, adam(pred)), res.state, buffer=res.buffer, history=res.history)
    assert again.recorded == 20 and len(res.buffer) == 34


def test_retrain_cap_raises_a_typed_error_naming_system_error_and_threshold(host):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.2)
    cfg = TrainConfig(steps_per_epoch=2, max_retrain_steps=3, efficiency_weight=0.0)
    with pytest.raises(RetrainLimitError) as info:
        collect_trajectory(loop(pred, leap, cfg, adam(pred, 1e-12)), orbits(0.0, 0.9), epoch=4)
    err = info.value
    assert err.system == 1 and err.attempts == 3 and err.epoch == 4
    assert err.rel_dE > cfg.energy_threshold and err.threshold == cfg.energy_threshold
    assert "system 1" in str(err) and f"{cfg.energy_threshold:.3e}" in str(err) and "max_retrain_steps" in str(err)


def test_retrain_cap_with_fallback_takes_a_classical_step_and_goes_on(host):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.2)
    cfg = TrainConfig(steps_per_epoch=3, max_retrain_steps=2, on_retrain_limit="fallback", efficiency_weight=0.0)
    fallback = host.predictors.create("freefall", eta=1.0)  # too large on purpose: the fallback halves it
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred, 1e-12), fallback=fallback), orbits(0.0, 0.9))
    assert res.accepted.tolist() == [3, 3] and res.fallbacks >= 1
    assert bool((res.buffer.rel_dE <= cfg.energy_threshold).all())


def test_stop_time_ends_a_systems_collection(host):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.05)
    cfg = TrainConfig(steps_per_epoch=10_000)
    start = orbits(0.2, 0.2)
    stop = torch.tensor([0.05, 0.1], dtype=torch.float64)
    res = collect_trajectory(loop(pred, leap, cfg, adam(pred)), start, stop_time=stop)
    assert bool((res.state.time >= stop).all())
    assert res.accepted[0] < res.accepted[1] < 10_000


def test_stop_request_ends_collection_keeping_accepted_steps(host, events):
    leap = host.integrators.create("leapfrog")
    pred = mlp(host, init_factor=0.02)
    control = RunControl()
    events.control, events.stop_at = control, 4
    res = collect_trajectory(loop(pred, leap, TrainConfig(steps_per_epoch=50), adam(pred), hook=events,
                                  control=control), orbits(0.5))
    assert res.stopped and res.accepted.tolist() == [4] and len(res.buffer) == 4
    assert torch.allclose(res.state.time, torch.tensor(events.of("StepAccepted")[-1].time))
