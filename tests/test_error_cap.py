"""The error cap (plugins/error_cap.py): a base dt raised, and capped where the integrator's own error estimate
says the step would fail; and the ``learned`` predictor, which flies its network inside it."""

from __future__ import annotations

import math

import pytest
import torch
from systems import random_cluster, two_body_orbit

from nbtoolkit.errors import ConfigError
from nbtoolkit.evaluate import evaluate_predictor
from nbtoolkit.integrator import Integrator
from nbtoolkit.physics import relative_energy_error, state_energy, to_center_of_mass_frame
from nbtoolkit.presets import make_preset
from nbtoolkit.state import NBodyState, System
from plugins.error_cap import ErrorCappedDt
from plugins.learned_predictor import (
    ERROR_CAP,
    ERROR_CAP_BOOST,
    ERROR_CAP_DOUBLINGS,
    ERROR_CAP_MAX_BOOST,
    ERROR_CAP_QUIET,
    ERROR_CAP_RAISE,
    ERROR_CAP_TOLERANCE,
    FEEDBACK_CEILING,
)
from plugins.mlp_predictor import MLPDtPredictor

GATE = 2e-4


def step_error(integrator, state, dt):
    return relative_energy_error(state_energy(state), state_energy(integrator.step(state, dt)))


def test_the_cap_shortens_a_step_the_raised_base_would_fail(host):
    """Near the pericentre of an e = 0.9 orbit, a free-fall rule with a large eta fails the gate; capped, the
    step is shorter and passes, with an error near cap^3 of the gate."""
    leapfrog = host.integrators.create("leapfrog")
    state, period = two_body_orbit(e=0.9)
    state = leapfrog.step(state, torch.full((1,), -period / 2000, dtype=torch.float64))  # just before pericentre
    base = host.predictors.create("freefall", eta=0.3)
    capped = ErrorCappedDt(base, boost=1.2, cap=0.85, gate=GATE)
    capped.bind_integrator(leapfrog)
    raised = 1.2 * base(state)
    dt = capped(state)
    assert float(step_error(leapfrog, state, raised)) > GATE
    assert float(dt) < float(raised)
    assert 0.3 * 0.85**3 * GATE < float(step_error(leapfrog, state, dt)) < GATE


def test_where_the_estimate_allows_more_the_base_is_raised_by_boost(host):
    base = host.predictors.create("constant", dt=1e-6)
    capped = ErrorCappedDt(base, boost=1.27, cap=0.85, gate=GATE)
    capped.bind_integrator(host.integrators.create("leapfrog"))
    state = random_cluster(batch=3, n=4, seed=4)
    torch.testing.assert_close(capped(state), torch.full((3,), 1.27e-6, dtype=torch.float64), rtol=1e-15, atol=0.0)


class UnknownError(Integrator):
    """Leapfrog whose error estimate is ``value`` (NaN, or inf as for a system of zero energy)."""

    order = 2

    def __init__(self, leapfrog, value: float):
        self.leapfrog, self.value = leapfrog, value

    def step(self, state, dt):
        return self.leapfrog.step(state, dt)

    def energy_error_coefficient(self, state, dt):
        return torch.full_like(dt, self.value)


@pytest.mark.parametrize("integrator", ["yoshida4", "rk4", "nan", "inf"])
def test_without_an_estimate_the_base_is_taken_as_it_is(host, integrator):
    """No estimate (another integrator) or none that is a finite number: the base's dt, not raised."""
    base = host.predictors.create("freefall", eta=0.05)
    capped = ErrorCappedDt(base, boost=1.27, cap=0.85, gate=GATE)
    leapfrog = host.integrators.create("leapfrog")
    bound = UnknownError(leapfrog, float(integrator)) if integrator in ("nan", "inf") else host.integrators.create(integrator)
    capped.bind_integrator(bound)
    state = random_cluster(batch=2, n=5, seed=6)
    assert torch.equal(capped(state), base(state))


def test_before_a_run_binds_an_integrator_leapfrog_is_estimated(host):
    base = host.predictors.create("freefall", eta=0.3)
    state = random_cluster(batch=2, n=5, seed=7)
    unbound = ErrorCappedDt(base, boost=1.27, cap=0.85, gate=GATE)
    bound = ErrorCappedDt(base, boost=1.27, cap=0.85, gate=GATE)
    bound.bind_integrator(host.integrators.create("leapfrog"))
    assert torch.equal(unbound(state), bound(state))
    assert not torch.equal(unbound(state), base(state))


@pytest.mark.parametrize("bad", [{"boost": 0.0}, {"cap": -1.0}, {"gate": float("inf")}, {"boost": float("nan")},
                                 {"raise_cap": 0.0}, {"max_boost": float("inf")}, {"doublings": -1}, {"doublings": 9},
                                 {"doublings": 1.5}, {"doublings": True}, {"tolerance": 1.0}, {"tolerance": 0.0},
                                 {"max_boost": 1.0}, {"quiet": 1.0}, {"quiet": -0.1}, {"quiet": True},
                                 {"vouch": 0.0}, {"vouch": 1.5}, {"vouch": True}])
def test_bad_settings_are_refused(host, bad):
    settings = {"boost": 1.2, "cap": 0.8, "gate": GATE, **bad}
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=f"error cap: {name} must"):
        ErrorCappedDt(host.predictors.create("constant"), **settings)


def raised_further(host, state, base_dt: float):
    """(dt, level_base) of a constant base of ``base_dt`` inside the learned predictor's cap and further raise."""
    capped = ErrorCappedDt(host.predictors.create("constant", dt=base_dt), boost=ERROR_CAP_BOOST, cap=ERROR_CAP,
                           gate=GATE, doublings=ERROR_CAP_DOUBLINGS, tolerance=ERROR_CAP_TOLERANCE,
                           max_boost=ERROR_CAP_MAX_BOOST, raise_cap=ERROR_CAP_RAISE, quiet=ERROR_CAP_QUIET)
    capped.bind_integrator(host.integrators.create("leapfrog"))
    dt = capped(state)
    return float(dt[0]), float(capped.level_base[0])


def test_where_the_estimate_holds_over_longer_steps_dt_rises_further_and_the_step_passes(host):
    """On a Kepler orbit away from its turning points, the estimate's coefficient barely changes over 2 and 4 times
    the raised step: a short base (a thousandth of the period) rises to max_boost times itself, and a longer one (a
    hundredth) to raise_cap times the dt at which the estimate reaches the gate, whose step passes with an error
    near 0.7^3 of the gate."""
    leapfrog = host.integrators.create("leapfrog")
    state, period = two_body_orbit(e=0.5)
    state = leapfrog.step(state, torch.full((1,), period / 4, dtype=torch.float64))  # between the turning points
    dt, level_base = raised_further(host, state, period / 1000)
    assert level_base == pytest.approx(1.27 * period / 1000, rel=1e-12)
    assert dt == pytest.approx(4.0 * period / 1000, rel=1e-12)
    dt, level_base = raised_further(host, state, period / 100)
    assert 1.27 * period / 100 < dt < 3.99 * period / 100
    error = float(step_error(leapfrog, state, torch.full((1,), dt, dtype=torch.float64)))
    assert 0.5 * 0.7**3 * GATE < error < 0.7**3 * GATE / 0.7


def test_across_a_turning_point_the_estimate_is_not_trusted_further(host):
    """A step that straddles pericentre, where dH2/dt changes sign: over the longer steps its mean cancels, C falls
    below the tolerance times its value over the raised step, and dt stays at the raised base, though four times the
    base would pass. From pericentre itself dH2/dt grows along the step, and C with it: on a quiet step (a base of a
    thousandth of the period, far too cautious) the estimate over the longest step is the larger and it holds, so dt
    rises and its step passes; on a step that is not quiet (a base ten times as long), a C that grows is not
    trusted."""
    leapfrog = host.integrators.create("leapfrog")
    state, period = two_body_orbit(e=0.5)
    base = period / 1000
    for back in (1.0, 2.0):  # the longer steps reach past pericentre
        before = leapfrog.step(state, torch.full((1,), -back * 1.27 * base, dtype=torch.float64))
        dt, level_base = raised_further(host, before, base)
        assert dt == level_base == pytest.approx(1.27 * base, rel=1e-12)
        assert float(step_error(leapfrog, before, torch.full((1,), 4 * base, dtype=torch.float64))) < GATE
    dt, level_base = raised_further(host, state, base)
    assert level_base == pytest.approx(1.27 * base, rel=1e-12)
    assert dt > 2 * level_base
    assert float(step_error(leapfrog, state, torch.full((1,), dt, dtype=torch.float64))) < 0.7**3 * GATE
    dt, level_base = raised_further(host, state, 10 * base)
    assert dt == level_base


def test_the_further_raise_takes_the_rigid_lagrange_triangle_in_fewer_steps_every_step_passing(host, load_benchmark):
    """Three equal masses rotating rigidly on an equilateral triangle: the network, which sees three eccentric pairs
    pulled hard by a third body, proposes a third of the dt the estimate allows there. Its raised steps are quiet,
    and from the exact rotation dH2/dt grows from near zero: the raise holds from the first step, and the run takes
    under 0.85 of the steps (39 without the raise, 30 with it)."""
    from nbtoolkit.state import System

    state = load_benchmark("bench_outside").lagrange(0.0)
    system = System(state, torch.full((1,), 10.0, dtype=torch.float64))
    leapfrog = host.integrators.create("leapfrog")
    further = host.predictors.create("learned")
    once = host.predictors.create("learned", further_raise=False)
    assert once.base.doublings == 0
    with_raise, without = (evaluate_predictor(system, leapfrog, p, orbits=1.0, threshold=GATE)[0] for p in (further, once))
    assert with_raise.pass_fraction == 1.0 and without.pass_fraction == 1.0
    assert with_raise.steps < 0.85 * without.steps


def test_learned_flies_its_network_inside_the_cap_unless_told_otherwise(host):
    default = host.predictors.create("learned")
    assert isinstance(default.base, ErrorCappedDt)
    assert (default.base.boost, default.base.cap, default.base.gate) == (ERROR_CAP_BOOST, ERROR_CAP, GATE)
    assert (default.base.doublings, default.base.tolerance, default.base.max_boost, default.base.raise_cap,
            default.base.quiet) == (ERROR_CAP_DOUBLINGS, ERROR_CAP_TOLERANCE, ERROR_CAP_MAX_BOOST, ERROR_CAP_RAISE,
                                    ERROR_CAP_QUIET)
    assert isinstance(default.base.base, MLPDtPredictor)
    assert isinstance(host.predictors.create("learned", error_cap=False).base, MLPDtPredictor)
    assert isinstance(host.predictors.create("learned", feedback=False), MLPDtPredictor)
    assert isinstance(host.predictors.create("learned", feedback=False, error_cap=True), ErrorCappedDt)
    # the cap's estimate depends on the direction of time: a time-symmetric network flies without it
    assert isinstance(host.predictors.create("learned", time_symmetric=True).base, MLPDtPredictor)
    # the feedback predictor steers the shipped network's base, cap included
    assert isinstance(host.predictors.create("feedback").base, ErrorCappedDt)


def test_the_cap_takes_the_figure_eight_in_fewer_steps_every_step_passing(host):
    leapfrog = host.integrators.create("leapfrog")
    system = make_preset("figure-eight")
    capped, alone = (evaluate_predictor(system, leapfrog, host.predictors.create("learned", error_cap=cap),
                                        orbits=1.0, threshold=GATE)[0] for cap in (True, False))
    assert capped.pass_fraction == 1.0 and alone.pass_fraction == 1.0
    assert capped.steps < 0.95 * alone.steps


class LadderIntegrator(Integrator):
    """A second-order integrator whose estimates are given: C (3, B) over steps of h, 2 h and 4 h of the state as it
    is (``forward``) and with its velocities reversed (``backward``, told apart by the sign of the first velocity)."""

    order = 2

    def __init__(self, forward: list[list[float]], backward: list[list[float]]) -> None:
        self.forward = torch.tensor(forward, dtype=torch.float64)
        self.backward = torch.tensor(backward, dtype=torch.float64)
        self.sign: float | None = None
        self.calls = 0

    def step(self, state, dt):
        raise AssertionError("the cap only estimates")

    def energy_error_coefficients(self, state, dt, doublings):
        assert doublings == 2
        self.calls += 1
        sign = float(state.velocity[0, 0, 1].sign())
        self.sign = sign if self.sign is None else self.sign
        return self.forward if sign == self.sign else self.backward


def test_the_further_raise_takes_the_longest_step_its_held_estimates_allow(host):
    """A constant base of 1 raised to h = 1.27, and per system C over h, 2h and 4h (gate 2e-4, tolerance and
    raise_cap 0.7, quiet 0.1): where C stays steady, dt rises to max_boost x base; where it falls below 0.7 C(h) at
    2h (a turning point inside), no raise; where it holds at 2h but falls at 4h, the raise stops at 2h. Where the
    raised step is quiet (an error of 1e-7) a C that grows holds too, if it does not fall backward in time: the step
    of 2h is taken where the estimate over 4h allows no more, and 4h where it does, but 2h where C over 4h falls
    backward. Where the raised step is not quiet (5e-5), a C that grows does not hold."""
    h = 1.27
    quiet, loud = 1e-7 / h**3, 5e-5 / h**3  # a step of h makes an error of 1e-7, or of 5e-5
    forward = [[quiet] * 5 + [loud, quiet],
               [quiet, 0.5 * quiet, quiet, quiet, quiet, 2 * loud, quiet],
               [quiet, quiet, 0.6 * quiet, 1e4 * quiet, 2 * quiet, 2 * loud, 2 * quiet]]
    backward = [[quiet] * 5 + [loud, quiet], [quiet] * 5 + [loud, quiet], [quiet] * 6 + [0.5 * quiet]]
    ladder = LadderIntegrator(forward, backward)
    capped = ErrorCappedDt(host.predictors.create("constant", dt=1.0), boost=1.27, cap=0.85, gate=GATE,
                           doublings=2, tolerance=0.7, max_boost=4.0, raise_cap=0.7, quiet=0.1)
    capped.bind_integrator(ladder)
    state, _ = two_body_orbit(e=0.5)
    dt = capped(NBodyState.cat([state] * 7))
    assert dt.tolist() == pytest.approx([4.0, h, 2 * h, 2 * h, 4.0, h, 2 * h], rel=1e-12)
    assert capped.level_base.tolist() == pytest.approx([h] * 7, rel=1e-12)
    assert ladder.calls == 2  # forward, and backward for the quiet systems whose C grows
    none_grows = [0, 1, 2, 5]
    ladder = LadderIntegrator(*([[row[i] for i in none_grows] for row in rows] for rows in (forward, backward)))
    capped.bind_integrator(ladder)
    capped(NBodyState.cat([state] * len(none_grows)))
    assert ladder.calls == 1  # no backward estimate


@pytest.mark.parametrize("seed", [11, 12])
def test_the_raise_keeps_its_bounds_and_gives_each_system_what_it_gives_it_alone(host, load_benchmark, seed):
    """Random three-body systems and the rigid Lagrange triangle (quiet, its coefficient growing both ways) through the
    learned network inside its cap and further raise: dt lies between the dt without the raise and max_boost times
    the network's, that one at most boost times the network's; and a system's dt does not depend on the batch it
    flies in (the backward estimate is taken per batch, only where a system needs it)."""
    network = host.predictors.create("learned", feedback=False)
    capped = host.predictors.create("learned").base
    leapfrog = host.integrators.create("leapfrog")
    states = [random_cluster(batch=1, n=3, seed=10 * seed + k) for k in range(4)]
    states += [leapfrog.step(s, torch.full((1,), 0.05, dtype=torch.float64)) for s in states]
    states.append(load_benchmark("bench_outside").lagrange(0.0))
    batch = NBodyState.cat(states)
    with torch.no_grad():
        base = network(batch)
        dt = capped(batch)
        level_base = capped.level_base.clone()
        alone = torch.cat([capped(s) for s in states])
    assert torch.all(level_base <= ERROR_CAP_BOOST * base * (1 + 1e-12))
    assert torch.all(level_base <= dt) and torch.all(dt <= ERROR_CAP_MAX_BOOST * base * (1 + 1e-12))
    assert float(dt[-1]) > 1.9 * float(level_base[-1])  # the Lagrange triangle's first step is raised
    torch.testing.assert_close(dt, alone, rtol=1e-12, atol=0)


def s_type_planet() -> System:
    """A planet of 1e-4 on a circular orbit of 0.17 (of the binary's separation at apocentre) around the primary of a
    binary (1 + 0.56, a = 1, e = 0.05, from apocentre), flown for three binary periods."""
    from nbtoolkit.family_sampling import kepler_relative

    def one(x: float) -> torch.Tensor:
        return torch.tensor([x], dtype=torch.float64)

    m2, eb, f, phase = 0.565, 0.0517, 0.1707, 5.149
    xb, vb = kepler_relative(one(1.0), one(eb), one(1.0 + m2), one(math.pi))
    xp, vp = kepler_relative(one(f * (1 - eb)), one(0.0), one(1.0 + 1e-4), one(phase))
    zero = torch.zeros(1, 3, dtype=torch.float64)
    mass = torch.tensor([[1.0, m2, 1e-4]], dtype=torch.float64)
    state = to_center_of_mass_frame(NBodyState.from_arrays(mass, torch.cat([zero, xb, xp]).unsqueeze(0),
                                                           torch.cat([zero, vb, vp]).unsqueeze(0)))
    return System(state, torch.full((1,), 3 * 2 * math.pi / math.sqrt(1 + m2), dtype=torch.float64))


def test_the_controller_stays_under_the_dt_the_estimate_vouches_for(host):
    """A light planet around one star of a binary: its steps make errors far under the gate most of the time, and the
    controller's level rises well above 1; where the planet's pair then comes near a turning point, that level would
    take a step that the estimate over twice the raised step (its coefficient three times larger) sees failing, and
    without the ceiling a step fails. With it (`learned`), every step passes, in fewer steps."""
    leapfrog = host.integrators.create("leapfrog")
    system = s_type_planet()
    learned = host.predictors.create("learned")
    assert learned.base.vouch == FEEDBACK_CEILING
    unvouched = host.predictors.create("learned")
    unvouched.base.vouch = None
    with_ceiling, without = (evaluate_predictor(system, leapfrog, p, orbits=1.0, threshold=GATE)[0]
                             for p in (learned, unvouched))
    assert without.pass_fraction < 1.0
    assert with_ceiling.pass_fraction == 1.0 and with_ceiling.steps < without.steps


def test_the_ceiling_is_where_the_interpolated_estimate_reaches_vouch_times_the_gate(host):
    """C steady over h, 2h and 4h: the ceiling solves C dt^3 = 0.85 x gate. C growing eightfold from h to 2h (log-linear
    in between: C(dt) = C(h) (dt / h)^3) with an error of 1e-5 at h: the error grows like dt^6 there and reaches
    1.7e-4 at 17^(1/6) h. Where no step's error reaches the limit, beyond 4h, the longest step's C. Without vouch, no
    ceiling."""
    h = 1.27
    c = 1e-5 / h**3
    limit = 0.85 * GATE
    forward = [[c, c, c * 1e-6], [c, 8 * c, c * 1e-6], [c, 64 * c, c * 1e-6]]
    capped = ErrorCappedDt(host.predictors.create("constant", dt=1.0), boost=1.27, cap=0.85, gate=GATE,
                           doublings=2, tolerance=0.7, max_boost=4.0, raise_cap=0.7, quiet=0.02, vouch=0.85)
    capped.bind_integrator(LadderIntegrator(forward, forward))
    state, _ = two_body_orbit(e=0.5)
    capped(NBodyState.cat([state] * 3))
    expected = [(limit / c) ** (1 / 3), h * 17 ** (1 / 6), (limit / (c * 1e-6)) ** (1 / 3)]
    assert capped.dt_ceiling.tolist() == pytest.approx(expected, rel=1e-9)
    capped.vouch = None
    capped(NBodyState.cat([state] * 3))
    assert capped.dt_ceiling is None
