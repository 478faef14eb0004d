"""Headless simulation: run lengths, output shapes, the energy-gate guard, bad predictors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit import ConfigError, DtPredictor, InvalidTimestepError, total_energy
from nbtoolkit.simulate import iter_steps, simulate


class FixedDt(DtPredictor):
    def __init__(self, values):
        super().__init__()
        self.values = torch.as_tensor(values, dtype=torch.float64)

    def forward(self, state, history=None):
        return self.values.clone()


def test_fixed_steps_give_documented_shapes(host):
    state = random_cluster(3, 4, dim=3, softening=0.1)
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("constant", dt=0.01), steps=25)
    assert traj.position.shape == (26, 3, 4, 3) and traj.velocity.shape == (26, 3, 4, 3)
    assert traj.time.shape == (26, 3) and traj.energy.shape == (26, 3)
    assert traj.dt.shape == (25, 3) and traj.rel_dE.shape == (25, 3) and traj.mass.shape == (3, 4)
    assert np.allclose(traj.time[-1], 0.25)
    assert traj.summary()["steps"] == 25 and traj.summary()["force_evals"] == 75


def test_orbits_land_exactly_on_the_period_for_every_system(host):
    s1, p1 = two_body_orbit(e=0.2, a=1.0)
    s2, p2 = two_body_orbit(e=0.6, a=2.0)
    state = s1.cat([s1, s2])
    period = torch.tensor([p1, p2], dtype=torch.float64)
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("freefall", eta=0.02),
                    orbits=2, period=period)
    assert traj.time[-1] == pytest.approx([2 * p1, 2 * p2], rel=1e-12)
    # the system that arrives first waits with dt = 0 while the other finishes
    assert (traj.dt[:, 0] == 0).any() != (traj.dt[:, 1] == 0).any()
    # after two full orbits the bodies are back where they started (adaptive leapfrog, small eta)
    assert np.abs(traj.position[-1] - traj.position[0]).max() < 2e-2


def test_t_end_and_the_summary_energy_errors(host):
    state, _ = two_body_orbit(e=0.5)
    traj = simulate(state, host.integrators.create("yoshida4"), host.predictors.create("constant", dt=0.3), t_end=1.0)
    assert traj.dt[:, 0].tolist() == pytest.approx([0.3, 0.3, 0.3, 0.1])
    summary = traj.summary()
    final = abs(traj.energy[-1, 0] - traj.energy[0, 0]) / abs(traj.energy[0, 0])
    assert summary["final_rel_dE"] == pytest.approx(final)
    assert summary["max_step_rel_dE"] == pytest.approx(traj.rel_dE.max())


def test_guard_halves_dt_until_every_step_passes_the_gate(host):
    state, period = two_body_orbit(e=0.9)
    integ, big = host.integrators.create("leapfrog"), host.predictors.create("constant", dt=period / 200)
    plain = simulate(state, integ, big, orbits=1, period=torch.tensor([period]))
    assert plain.rel_dE.max() > 2e-4  # without the guard the pericentre passage fails the gate
    guarded = simulate(state, integ, big, orbits=1, period=torch.tensor([period]), guard_threshold=2e-4)
    assert guarded.rel_dE.max() <= 2e-4
    summary = guarded.summary()
    assert summary["guarded_steps"] == int(guarded.guarded.sum()) > 0
    assert summary["force_evals"] > summary["steps"]  # retries cost force evaluations
    assert set(np.unique(guarded.dt[guarded.guarded])) <= {period / 200 / 2**k for k in range(1, 21)}


def test_each_recorded_energy_is_that_of_its_recorded_state_guard_retries_included(host):
    state, period = two_body_orbit(e=0.9)
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("constant", dt=period / 200),
                    orbits=1, period=torch.tensor([period]), guard_threshold=2e-4)
    assert traj.guarded.any()  # some recorded states are retries, not the first attempt
    K, B, N, D = traj.position.shape
    recomputed = total_energy(torch.as_tensor(traj.mass).expand(K, B, N).reshape(K * B, N),
                              torch.as_tensor(traj.position).reshape(K * B, N, D),
                              torch.as_tensor(traj.velocity).reshape(K * B, N, D), state.G, state.softening)
    np.testing.assert_allclose(traj.energy, recomputed.reshape(K, B).numpy(), rtol=1e-13, atol=0)


def test_guard_gives_up_after_max_halvings_without_hanging(host):
    state, _ = two_body_orbit(e=0.9)
    out = next(iter_steps(state, host.integrators.create("leapfrog"), FixedDt([50.0]), guard_threshold=1e-300, max_halvings=3))
    assert out.dt.item() == 50.0 / 8 and out.guarded.item() and out.force_evals.item() == 4


@pytest.mark.parametrize("values, message", [([0.0], "dt = 0.0"), ([float("nan")], "dt = nan"),
                                             ([-1.0], "dt = -1.0"), ([0.1, 0.1], "shape")])
def test_a_predictor_returning_bad_dt_is_named(host, values, message):
    state, _ = two_body_orbit()
    with pytest.raises(InvalidTimestepError, match=f"dt predictor FixedDt \\(class {__name__}.FixedDt, .*{message}"):
        simulate(state, host.integrators.create("leapfrog"), FixedDt(values), steps=3)


def test_run_length_errors_are_raised_before_any_work(host):
    state, _ = two_body_orbit()
    integ, pred = host.integrators.create("leapfrog"), host.predictors.create("constant", dt=0.1)
    with pytest.raises(ConfigError, match="exactly one of"):
        simulate(state, integ, pred, steps=3, t_end=1.0)
    with pytest.raises(ConfigError, match="no known period"):
        simulate(state, integ, pred, orbits=2)
    with pytest.raises(ConfigError, match="max_steps=5"):
        simulate(state, integ, pred, t_end=100.0, max_steps=5)


def test_iter_steps_does_not_leave_grad_mode_disabled(host):
    state, _ = two_body_orbit()
    steps = iter_steps(state, host.integrators.create("leapfrog"), FixedDt([0.01]))
    next(steps)
    assert torch.is_grad_enabled()
