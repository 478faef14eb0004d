"""The `feedback` dt-predictor wrapper (plugins/feedback.py): the level it sets from the steps' errors,
per system and per run, its options, and what it does to the learned dt on the figure-eight."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from systems import two_body_orbit

from nbtoolkit.errors import OptionError, PluginError
from nbtoolkit.evaluate import evaluate_predictor
from nbtoolkit.plugin_manager import DEFAULT_PLUGINS
from nbtoolkit.predictor import DtPredictor
from nbtoolkit.presets import make_preset
from nbtoolkit.simulate import iter_steps, simulate
from nbtoolkit.state import NBodyState
from plugins.feedback import FeedbackDt


def fly(pred: FeedbackDt, state, errors: list[float]) -> list[float]:
    """Call ``pred`` and report each error in turn as its step's; the level after each report."""
    levels = []
    for err in errors:
        dt = pred(state)
        pred.observe_step(dt, torch.full_like(dt, err))
        assert pred.level is not None
        levels.append(float(pred.level[0]))
    return levels


@pytest.fixture
def constant_base(host):
    return host.predictors.create("constant", dt=0.01)


def test_registered_as_a_default_predictor(host):
    assert "plugins.feedback" in DEFAULT_PLUGINS
    assert host.predictors.get("feedback").source == "module plugins.feedback"
    default = host.predictors.create("feedback")
    assert type(default.base.base).__name__ == "MLPDtPredictor" and default.base_name == "learned"
    state, _ = two_body_orbit(e=0.5)
    assert torch.equal(default(state), default.base(state))  # no step observed: the base's dt exactly


def test_level_waits_a_window_then_rises_by_growth_up_to_max_boost(host, constant_base):
    pred = FeedbackDt(constant_base, window=4, growth=1.5, max_boost=3.0)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    levels = fly(pred, state, [1e-12] * 7)
    assert levels == pytest.approx([1, 1, 1, 1.5, 2.25, 3, 3])
    assert float(pred(state)[0]) == pytest.approx(0.03)


def test_a_step_near_the_gate_brings_the_level_down_and_the_memory_holds_it(host, constant_base):
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=3, memory=6, trust=10**7, growth=10.0,
                      max_boost=3.0, trend=0.0)  # the aim stays at the target; no foresight
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    assert fly(pred, state, [1e-12] * 3) == pytest.approx([1, 1, 3])
    # at level 3, an error of 8 x target allows 3 / 8^(1/3) = 1.5; the memory (6 steps) remembers it
    assert fly(pred, state, [8e-4] + [1e-12] * 6) == pytest.approx([1.5] * 6 + [3])
    # an error whose base-dt share (1 / 27) is over the ceiling: under the base's dt, down to min_level, until
    # the memory forgets it
    assert fly(pred, state, [1.0] + [1e-12] * 6) == pytest.approx([0.5] * 6 + [3])
    # an error that could not be measured counts as the worst; two in a row leave the level finite
    assert fly(pred, state, [float("nan"), 1e-12]) == pytest.approx([0.5, 0.5])
    assert fly(pred, state, [float("nan")] * 2 + [1e-12] * 6) == pytest.approx([0.5] * 7 + [3])
    assert float(pred._surprise[0]) == float("inf")  # and the aim stays at the target for the rest of the run


def test_the_memory_holds_the_level_steady_over_an_orbit_longer_than_the_window(host, constant_base):
    """Errors that peak once every 10 steps (a pericentre passage): with a memory of one window the level
    swings up between the peaks and back down after each; with a memory longer than the period it stays put."""
    period = [1e-6] * 9 + [1e-4]
    swinging = FeedbackDt(constant_base, window=4, memory=4, trust=10**7, growth=1.2, max_boost=2.0, trend=0.0)
    steady = FeedbackDt(constant_base, window=4, memory=16, trust=10**7, growth=1.2, max_boost=2.0, trend=0.0)
    for pred in (swinging, steady):
        pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    late = slice(60, 100)
    swings = fly_steady(swinging, state, period * 10)[late]
    holds = fly_steady(steady, state, period * 10)[late]
    assert max(swings) > 1.5 and min(swings) < 1.2  # up to 2 between the peaks, down after each
    assert max(holds) == pytest.approx(min(holds)) == pytest.approx(1.0)  # the peak already makes the target


def test_a_memory_a_little_over_the_ceiling_lowers_the_level_just_enough(host, constant_base):
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.6e-4, window=4)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    # 2e-4 at level 1: the level at which it would have made the ceiling, (1.6 / 2)^(1/3), from the next step on
    assert fly(pred, state, [2e-4]) == pytest.approx([0.8 ** (1 / 3)])


def fly_steady(pred: FeedbackDt, state, coeffs: list[float]) -> list[float]:
    """Report the error each step makes when the base dt's error is ``coeff``: coeff x level^3."""
    levels = []
    for coeff in coeffs:
        dt = pred(state)
        level = 1.0 if pred.level is None else float(pred.level[0])
        pred.observe_step(dt, torch.full_like(dt, coeff * level ** 3))
        levels.append(float(pred.level[0]))
    return levels


def test_a_fall_lasts_the_memory_so_a_peak_once_an_orbit_is_met_lower_the_next_time(host, constant_base):
    """The base's error peaks over the gate (2.5e-4) once every 10 steps: with a memory longer than that
    period every peak after the first is met at the level the first set, and makes the ceiling; with a
    memory of 4 steps the level is back at 1 when the next peak comes, and every peak fails the gate."""
    coeffs = ([1e-6] * 9 + [2.5e-4]) * 10
    for memory, failures in ((16, 1), (4, 10)):  # the first peak, met at level 1, fails either way
        pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=4, memory=memory, trust=10**7,
                          max_boost=1.0)
        pred.bind_integrator(host.integrators.create("leapfrog"))
        state, _ = two_body_orbit(e=0.5)
        levels = [1.0] + fly_steady(pred, state, coeffs)
        errors = [coeff * level ** 3 for coeff, level in zip(coeffs, levels)]
        assert sum(err > 2e-4 for err in errors) == failures
        assert max(errors[10:]) == pytest.approx(1.7e-4 if memory == 16 else 2.5e-4)


def test_foresight_lowers_the_step_after_a_rise_as_if_the_rise_went_on(host, constant_base):
    """Errors that climb towards the gate, still under the ceiling: with foresight the step after a rise of
    1.6 / 1.3 is taken as if its error coefficient rose as much again, so the level falls under 1 before the
    gate is crossed; without, the memory's largest (1.6e-4) is under the ceiling and the level stays 1."""
    state, _ = two_body_orbit(e=0.5)
    rising = [1.0e-4, 1.3e-4, 1.6e-4]
    for trend, last in ((0.0, 1.0), (1.0, (1.7 / (1.6 * 1.6 / 1.3)) ** (1 / 3))):
        pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=100, trend=trend)
        pred.bind_integrator(host.integrators.create("leapfrog"))
        assert fly(pred, state, rising) == pytest.approx([1.0, 1.0, last])
    # a fall is not foreseen to go on, and a jump from almost nothing counts as at most 4x
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=100)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    assert fly(pred, state, [1.6e-4, 1e-4]) == pytest.approx([1.0, 1.0])
    assert fly(pred, state, [1e-12, 1e-4]) == pytest.approx([1.0, (1.7 / 4) ** (1 / 3)])


def test_once_the_aim_has_risen_foresight_guards_only_twice_the_target(host, constant_base):
    """A rise of 1.4x from 1e-4 is foreseen at 1.96e-4: over the ceiling (1.7e-4) while the aim is still rising,
    so the level falls; under twice the target once the window and the trust ramp are over, so it does not. A
    rise of 1.5x (2.25e-4 foreseen) lowers it either way, to where it would make the ceiling or twice the target."""
    state, _ = two_body_orbit(e=0.5)
    for window, trust, levels in ((100, 64, [(1.7 / 1.96) ** (1 / 3), (1.7 / 2.25) ** (1 / 3)]),
                                  (2, 2, [1.0, (2.0 / 2.25) ** (1 / 3)])):
        for rise, level in zip((1.4, 1.5), levels):
            pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=window, trust=trust, growth=1.0)
            pred.bind_integrator(host.integrators.create("leapfrog"))
            assert fly(pred, state, [1e-4] * 4 + [rise * 1e-4]) == pytest.approx([1.0] * 4 + [level])


def test_a_step_lowered_by_foresight_does_not_slow_the_climb_after_it(host, constant_base):
    """The level climbs by growth (1.05) a step towards the aim's level (1e-4 / 1e-5)^(1/3); a coefficient
    1.5x higher is foreseen at 2.25e-5 for one step; the step after, with the coefficient flat, the level is
    back where the memory puts it, not 1.05x the lowered one."""
    state, _ = two_body_orbit(e=0.5)
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.7e-4, window=1, memory=4, trust=10**7, growth=1.05)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    levels = fly_steady(pred, state, [1e-5] * 20 + [1.5e-5] * 2)
    assert levels[19] == pytest.approx(10 ** (1 / 3))
    assert levels[20] == pytest.approx((1e-4 / 2.25e-5) ** (1 / 3))
    assert levels[21] == pytest.approx((1e-4 / 1.5e-5) ** (1 / 3))


def test_steady_errors_raise_the_aim_to_the_ceiling_over_trust_steps(host, constant_base):
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.6e-4, window=2, trust=4, growth=100.0, max_boost=100.0)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    levels = fly_steady(pred, state, [1e-5] * 8)
    aims = [1e-4 + 0.6e-4 * min(max(n - 2, 0) / 4, 1.0) for n in range(1, 9)]  # after n steps observed
    assert levels[1:] == pytest.approx([(aim / 1e-5) ** (1 / 3) for aim in aims[1:]])
    assert levels[-1] == pytest.approx(16 ** (1 / 3))


def test_a_surprise_lowers_the_aim(host, constant_base):
    """A step whose error coefficient is twice its memory's largest: the aim goes to ceiling / 2, under
    the target, so that a jump like it from the memory's worst still makes the ceiling."""
    pred = FeedbackDt(constant_base, target=1e-4, ceiling=1.6e-4, window=2, memory=4, trust=4, growth=100.0,
                      max_boost=100.0)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    levels = fly_steady(pred, state, [1e-5] * 2 + [2e-5] + [1e-5] * 12)
    assert float(pred._surprise[0]) == pytest.approx(2.0)
    assert levels[-1] == pytest.approx(8 ** (1 / 3))


def test_the_error_exponent_is_the_integrators_order_plus_one(host, constant_base):
    state, _ = two_body_orbit(e=0.5)
    for integrator, level in (("leapfrog", 32 ** (1 / 3)), ("yoshida4", 2.0)):
        pred = FeedbackDt(constant_base, target=1e-4, window=1, growth=100.0, max_boost=100.0)
        pred.bind_integrator(host.integrators.create(integrator))
        assert pred.exponent == host.integrators.create(integrator).order + 1
        assert fly(pred, state, [1e-4 / 32]) == pytest.approx([level])


def test_levels_are_per_system_and_a_new_run_starts_again(host, constant_base):
    pred = FeedbackDt(constant_base, window=1, growth=2.0)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    one, _ = two_body_orbit(e=0.5)
    two = NBodyState.cat([one, one])
    dt = pred(two)
    pred.observe_step(dt, torch.tensor([1e-12, 1.0], dtype=torch.float64))
    assert pred.level.tolist() == [2.0, 0.5]
    assert pred(two).tolist() == [0.02, 0.005]
    pred.bind_integrator(host.integrators.create("leapfrog"))  # a new run
    assert pred.level is None and pred(two).tolist() == [0.01, 0.01]
    assert pred(one).tolist() == [0.01]  # another batch size: level 1 again


def test_simulate_reports_every_step_to_it(host, constant_base):
    """A circular orbit with a small constant base dt: after `window` steps, dt grows by `growth` a step
    up to max_boost x the base, and every step still passes the gate."""
    state, period = two_body_orbit(e=0.0)
    pred = host.predictors.create("feedback", base=constant_base, window=4, growth=1.1, max_boost=2.0)
    traj = simulate(state, host.integrators.create("leapfrog"), pred, orbits=1.0, period=period)
    dt = torch.as_tensor(traj.dt[:, 0])
    assert torch.allclose(dt[:4], torch.full((4,), 0.01, dtype=torch.float64))
    assert float(dt[4]) == pytest.approx(0.011) and float(dt[5]) == pytest.approx(0.0121)
    assert float(dt[:-1].max()) == pytest.approx(0.02)  # the last step lands on the end time
    assert float(torch.as_tensor(traj.rel_dE).max()) < 1e-4


def test_raises_the_learned_dt_on_the_figure_eight_and_keeps_every_step_under_the_gate(host):
    system = make_preset("figure-eight")
    leapfrog = host.integrators.create("leapfrog")
    alone = evaluate_predictor(system, leapfrog, host.predictors.create("learned", feedback=False), orbits=2.0,
                               threshold=2e-4)[0]
    raised = evaluate_predictor(system, leapfrog, host.predictors.create("learned"), orbits=2.0, threshold=2e-4)[0]
    assert alone.pass_fraction == raised.pass_fraction == 1.0
    assert raised.steps < 0.95 * alone.steps


def test_on_a_rigid_rotation_the_learned_dt_rises_past_twice_the_network_and_every_step_passes(host, load_benchmark):
    """The network takes Euler's rigid rotation for a perturbed eccentric pair and its errors stay far under the
    gate, so the level climbs to its cap: above 2 (the first default) and never above max_boost."""
    learned = host.predictors.create("learned")
    levels = []
    rigid = load_benchmark("bench_outside").euler_collinear()
    for result in islice(iter_steps(rigid, host.integrators.create("leapfrog"), learned), 120):
        assert float(result.error[0]) <= 2e-4
        levels.append(float(learned.level[0]))
    assert 2.0 < max(levels[60:]) <= learned.max_boost == 4.0 and sorted(levels[60:])[30] > 2.0  # the median


def test_before_the_window_only_errors_far_under_the_target_raise_the_level(host, constant_base):
    """From `early` steps on, errors under a quarter of the target let the level rise, at most to early_boost,
    before the window; errors at the target's level leave it at 1 until the window."""
    state, _ = two_body_orbit(e=0.5)
    quiet = FeedbackDt(constant_base, target=1e-4, window=8, early=3, growth=1.5, early_boost=2.0, max_boost=4.0)
    quiet.bind_integrator(host.integrators.create("leapfrog"))
    assert fly(quiet, state, [1e-12] * 9) == pytest.approx([1, 1, 1.5, 2, 2, 2, 2, 3, 4])
    busy = FeedbackDt(constant_base, target=1e-4, window=8, early=3, growth=1.5, early_boost=2.0, max_boost=4.0)
    busy.bind_integrator(host.integrators.create("leapfrog"))
    assert fly(busy, state, [5e-5] * 8) == pytest.approx([1] * 7 + [2 ** (1 / 3)])  # the aim: the target


def test_the_learned_dt_rises_early_on_a_rigid_rotation_and_waits_for_the_window_in_a_cluster(host, load_benchmark):
    """Euler's rigid rotation makes errors of 10^-7 to 10^-6: its level rises before the 32-step window. The
    first errors of a Plummer cluster sit near the target: its level does not rise for the whole window."""
    leapfrog = host.integrators.create("leapfrog")

    def levels(state: NBodyState, steps: int) -> list[float]:
        learned = host.predictors.create("learned")
        out = []
        for result in islice(iter_steps(state, leapfrog, learned), steps):
            assert float(result.error[0]) <= 2e-4
            out.append(float(learned.level[0]))
        return out

    rigid = levels(load_benchmark("bench_outside").euler_collinear(), 31)
    assert rigid[:7] == [1.0] * 7 and 1.2 < rigid[-1] <= 2.0
    assert max(levels(make_preset("plummer", n=16, seed=2).state, 31)) == 1.0  # lowered by foresight, never raised


def test_bad_options_are_errors(host, constant_base):
    owner = r"of dt predictor 'feedback' \(plugin 'plugins.feedback'\)"
    with pytest.raises(OptionError, match=f"option 'target' {owner} must be finite and > 0; got 0"):
        host.predictors.create("feedback", target=0)
    with pytest.raises(OptionError, match=f"option 'max_boost' {owner} must be finite and >= 1; got 0.5"):
        host.predictors.create("feedback", max_boost=0.5)
    with pytest.raises(OptionError, match=f"option 'window' {owner} must be in \\[1, 100000\\]; got 0"):
        host.predictors.create("feedback", window=0)
    with pytest.raises(OptionError, match=f"option 'early' {owner} must be in \\[1, 100000\\]; got 0"):
        host.predictors.create("feedback", early=0)
    with pytest.raises(OptionError, match=f"option 'early_boost' {owner} must be finite and >= 1; got 0.5"):
        host.predictors.create("feedback", early_boost=0.5)
    with pytest.raises(OptionError, match=f"option 'trend' {owner} must be finite and >= 0; got -1"):
        host.predictors.create("feedback", trend=-1.0)
    with pytest.raises(OptionError, match="option 'eta' of dt predictor 'freefall'"):  # the base's own declaration
        host.predictors.create("feedback", base="freefall", eta=-1.0)
    with pytest.raises(PluginError, match="options dt cannot be applied to a base given as an object"):
        host.predictors.create("feedback", base=constant_base, dt=0.1)
    with pytest.raises(OptionError, match="option 'growth' of FeedbackDt must be finite and >= 1; got 0.9"):
        FeedbackDt(constant_base, growth=0.9)
    with pytest.raises(OptionError, match=f"option 'min_level' {owner} must be finite and > 0 and <= 1; got 2"):
        host.predictors.create("feedback", min_level=2)
    with pytest.raises(PluginError, match=r"option 'ceiling' \(5e-05\) must be >= option 'target' \(0.0001\)"):
        host.predictors.create("feedback", ceiling=5e-5)
    with pytest.raises(PluginError, match=r"option 'memory' \(16\) must be >= option 'window' \(32\)"):
        host.predictors.create("feedback", memory=16)


def test_a_base_that_flies_its_own_controller_is_steered_by_the_new_one(host):
    pred = host.predictors.create("feedback", base="learned", target=5e-5, ceiling=8e-5)
    assert type(pred.base).__name__ == "ErrorCappedDt" and (pred.target, pred.ceiling) == (5e-5, 8e-5)
    assert type(pred.base.base).__name__ == "MLPDtPredictor"
    symmetric = host.predictors.create("symmetric", base="learned")
    assert type(symmetric.base).__name__ == "MLPDtPredictor"  # a dt that follows past errors is not symmetric


class RaisingBase(DtPredictor):
    """A base whose dt is three times the dt it gives a controller's level to multiply (``level_base``), as the
    error cap's further raise is."""

    history_len = 0

    def __init__(self, dt: float):
        super().__init__()
        self.dt = dt
        self.level_base: torch.Tensor | None = None

    def forward(self, state, history=None):
        self.level_base = torch.full((state.batch_size,), self.dt, dtype=torch.float64)
        return 3 * self.level_base


def test_the_level_multiplies_the_base_without_its_raise_and_a_raise_above_it_is_kept(host):
    """Level 1.5: 1.5 x level_base is under the raised dt, which is taken. Level 4: over it, taken. A level under 1
    (an error over the ceiling) lowers the level base itself, the raise dropped."""
    pred = FeedbackDt(RaisingBase(0.01), window=2, growth=1.5, max_boost=4.0, trend=0.0)
    pred.bind_integrator(host.integrators.create("leapfrog"))
    state, _ = two_body_orbit(e=0.5)
    assert float(pred(state)[0]) == pytest.approx(0.03)  # no step observed: the base's own dt
    # the level rises by growth from the level it gave, not from the raised steps' 3
    assert fly(pred, state, [1e-12] * 2) == pytest.approx([1.0, 1.5])
    assert float(pred(state)[0]) == pytest.approx(0.03)
    assert fly(pred, state, [1e-12] * 3) == pytest.approx([2.25, 3.375, 4.0])
    assert float(pred(state)[0]) == pytest.approx(0.04)
    fly(pred, state, [1.0])  # far over the ceiling: the level falls to min_level
    assert float(pred.level[0]) == pytest.approx(0.5)
    assert float(pred(state)[0]) == pytest.approx(0.005)


class VouchingBase(RaisingBase):
    """A RaisingBase that vouches for no dt longer than ``ceiling`` (``dt_ceiling``), as the error cap does."""

    def __init__(self, dt: float, ceiling: float):
        super().__init__(dt)
        self.ceiling = ceiling

    def forward(self, state, history=None):
        self.dt_ceiling = torch.full((state.batch_size,), self.ceiling, dtype=torch.float64)
        return super().forward(state, history)


def test_a_level_never_lengthens_dt_past_the_base_s_ceiling_nor_cuts_the_base_s_own_dt(host):
    """Level 4 would take 0.04; the base vouches for 0.035, which is taken. With a ceiling under the base's own dt
    (0.02 against 0.03), its own dt is taken. A level under 1 still lowers dt below both."""
    leapfrog = host.integrators.create("leapfrog")
    state, _ = two_body_orbit(e=0.5)
    for ceiling, expected in ((0.035, 0.035), (0.02, 0.03), (0.1, 0.04)):
        pred = FeedbackDt(VouchingBase(0.01, ceiling), window=2, growth=1.5, max_boost=4.0, trend=0.0)
        pred.bind_integrator(leapfrog)
        fly(pred, state, [1e-12] * 6)
        assert float(pred.level[0]) == pytest.approx(4.0)
        assert float(pred(state)[0]) == pytest.approx(expected)
    fly(pred, state, [1.0])
    assert float(pred(state)[0]) == pytest.approx(0.005)
