"""The `symmetric` dt-predictor wrapper (plugins/symmetric.py): options, counted force evaluations,
time symmetry and the long-run energy behaviour it exists for."""

from __future__ import annotations

import pytest
import torch
from systems import two_body_orbit

from nbtoolkit import DtPredictor, PluginError
from nbtoolkit.cli import main
from nbtoolkit.errors import OptionError
from nbtoolkit.physics import time_reversed
from nbtoolkit.plugin_manager import DEFAULT_PLUGINS
from nbtoolkit.presets import make_preset
from nbtoolkit.simulate import simulate
from plugins.symmetric import SymmetricDt


def test_registered_as_a_default_predictor(host):
    assert "plugins.symmetric" in DEFAULT_PLUGINS
    assert host.predictors.get("symmetric").source == "module plugins.symmetric"


def test_options_reach_the_base(host):
    state, _ = two_body_orbit(e=0.5)
    sym = host.predictors.create("symmetric", base="freefall", eta=0.05, iterations=3)
    assert isinstance(sym.base, DtPredictor) and sym.base.eta == 0.05 and sym.iterations == 3
    same = host.predictors.create("symmetric", base="freefall", base_options={"eta": 0.05}, iterations=3)
    assert torch.equal(sym(state), same(state))
    default = host.predictors.create("symmetric")
    assert type(default.base).__name__ == "FreeFallDt" and (default.iterations, default.solver) == (2, "secant")
    plain = host.predictors.create("freefall", eta=0.05)
    assert torch.equal(host.predictors.create("symmetric", eta=0.05, iterations=0)(state), plain(state))
    wrapped = host.predictors.create("symmetric", base=plain)
    assert wrapped.base is plain


def test_bad_options_are_errors(host):
    with pytest.raises(PluginError, match="does not take option.*hidden"):
        host.predictors.create("symmetric", base="freefall", hidden=3)
    with pytest.raises(Exception, match="unknown dt predictor 'nope'"):
        host.predictors.create("symmetric", base="nope")
    owner = r"of dt predictor 'symmetric' \(plugin 'plugins.symmetric'\)"
    with pytest.raises(OptionError, match=f"option 'iterations' {owner} must be >= 0; got -1"):
        host.predictors.create("symmetric", iterations=-1)
    with pytest.raises(OptionError, match=f"option 'iterations' {owner} must be an integer; got 1.5"):
        host.predictors.create("symmetric", iterations=1.5)
    with pytest.raises(OptionError, match=f"option 'solver' {owner} must be one of fixed-point, secant; got 'newton'"):
        host.predictors.create("symmetric", solver="newton")
    with pytest.raises(OptionError, match=f"option 'base' {owner} must be a registered dt predictor name, "
                                          "or from Python an object of class DtPredictor; got 5"):
        host.predictors.create("symmetric", base=5)
    with pytest.raises(OptionError, match=f"option 'integrator' {owner} must be a registered integrator name"):
        host.predictors.create("symmetric", integrator=4)
    with pytest.raises(OptionError, match=f"option 'base_options' {owner} must be a table"):
        host.predictors.create("symmetric", base_options=[1])
    with pytest.raises(OptionError, match="option 'eta' of dt predictor 'freefall'"):  # the base's own declaration
        host.predictors.create("symmetric", eta=-1.0)
    with pytest.raises(OptionError, match="option 'iterations' of SymmetricDt must be >= 0; got -2"):
        SymmetricDt(host.predictors.create("freefall"), iterations=-2)  # built directly: the declaration still checks


def test_declared_options_are_normalised(host):
    sym = host.predictors.create("symmetric", iterations=2.0, integrator="rk4", checkpoint=None)
    assert sym.iterations == 2 and isinstance(sym.iterations, int)
    assert type(sym.integrator).__name__ == "RK4"


def test_dt_is_the_mean_of_both_ends(host):
    """Converged, dt = 1/2 (tau(x_n) + tau(x_{n+1})) with x_{n+1} the leapfrog step by that dt."""
    leapfrog = host.integrators.create("leapfrog")
    start, _ = two_body_orbit(e=0.9)
    state = leapfrog.step(start, torch.tensor([0.05], dtype=torch.float64))  # off pericentre: tau changes along the step
    base = host.predictors.create("freefall", eta=0.1)
    for solver, iterations in (("fixed-point", 40), ("secant", 5)):
        sym = host.predictors.create("symmetric", base=base, iterations=iterations, solver=solver)
        dt = sym(state)
        end = leapfrog.step(state, dt)
        assert dt.item() == pytest.approx(0.5 * (base(state) + base(end)).item(), rel=1e-10), solver
        assert dt.item() > 1.01 * base(state).item()


def test_secant_converges_faster_than_fixed_point(host):
    leapfrog = host.integrators.create("leapfrog")
    start, _ = two_body_orbit(e=0.9)
    state = leapfrog.step(start, torch.tensor([0.05], dtype=torch.float64))
    exact = host.predictors.create("symmetric", eta=0.1, iterations=8)(state)

    def error(solver: str) -> float:
        return abs(host.predictors.create("symmetric", eta=0.1, iterations=3, solver=solver)(state) - exact).item()

    assert error("secant") < error("fixed-point") / 10


def there_and_back(host, state, predictor, steps: int) -> float:
    """Largest |x| error after ``steps`` leapfrog steps with ``predictor``, every velocity reversed, and as many
    steps again: 0 for a time-reversible rule."""
    leapfrog = host.integrators.create("leapfrog")
    s = state
    with torch.no_grad():
        for _ in range(steps):
            s = leapfrog.step(s, predictor(s))
        s = time_reversed(s)
        for _ in range(steps):
            s = leapfrog.step(s, predictor(s))
    return (s.position - state.position).abs().max().item()


def test_reversible_where_the_plain_rule_is_not(host):
    """Step forward, flip the velocities, step back the same number of steps: the symmetric rule
    returns to the start (to the accuracy of its fixed-point iteration), the plain one does not."""
    state, _ = two_body_orbit(e=0.8)
    plain = there_and_back(host, state, host.predictors.create("freefall", eta=0.05), 60)
    symmetric = there_and_back(host, state, host.predictors.create("symmetric", eta=0.05, iterations=6), 60)
    assert symmetric < 1e-9 < 1e-4 < plain


@pytest.mark.parametrize("iterations", [1, 3])
def test_trial_steps_are_counted_as_force_evaluations(host, iterations):
    system = make_preset("kepler", eccentricity=0.5)
    traj = simulate(system.state, host.integrators.create("leapfrog"),
                    host.predictors.create("symmetric", eta=0.1, iterations=iterations), orbits=1, period=system.period)
    assert traj.summary()["force_evals"] == traj.steps * (1 + iterations)
    yoshida = simulate(system.state, host.integrators.create("yoshida4"),
                       host.predictors.create("symmetric", eta=0.1, iterations=iterations), orbits=1, period=system.period)
    assert yoshida.summary()["force_evals"] == yoshida.steps * 3 * (1 + iterations)


def test_bounded_energy_error_where_the_plain_rule_drifts(host):
    """Kepler e = 0.9, 30 periods at equal force evaluations: the symmetric rule's drift is far smaller."""
    system = make_preset("kepler", eccentricity=0.9)
    leapfrog = host.integrators.create("leapfrog")
    plain = simulate(system.state, leapfrog, host.predictors.create("freefall", eta=0.1 / 3), orbits=30,
                     period=system.period).summary()
    sym = simulate(system.state, leapfrog, host.predictors.create("symmetric", eta=0.1, iterations=2), orbits=30,
                   period=system.period).summary()
    assert sym["force_evals"] == pytest.approx(plain["force_evals"], rel=0.1)
    assert sym["final_rel_dE"] < plain["final_rel_dE"] / 100


def test_a_trainable_base_stays_trainable(host):
    state, _ = two_body_orbit(e=0.5)
    sym = host.predictors.create("symmetric", base="mlp", iterations=1)
    assert sym.trainable and sym.history_len == sym.base.history_len
    sym(state).sum().backward()
    assert all(p.grad is not None for p in sym.parameters() if p.requires_grad)


def test_cli_simulate_and_evaluate(capsys):
    code = main(["simulate", "--preset", "kepler", "--eccentricity", "0.5", "--predictor", "symmetric",
                 "--predictor-option", "base=aarseth", "--predictor-option", "iterations=2", "--eta", "0.02",
                 "--orbits", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    lines = dict(line.split(None, 1) if not line.startswith(("force", "max", "final", "wall")) else
                 (line.rsplit(None, 1)[0], line.rsplit(None, 1)[1]) for line in out.strip().splitlines())
    assert int(lines["force evaluations"]) == 3 * int(lines["steps"])
    with pytest.raises(SystemExit):  # argparse rejects an option without '='
        main(["simulate", "--preset", "kepler", "--predictor", "symmetric", "--predictor-option", "bogus", "--orbits", "1"])
    code = main(["simulate", "--preset", "kepler", "--predictor", "symmetric", "--predictor-option", "base=nope",
                 "--orbits", "1", "--quiet"])
    assert code == 2 and "unknown dt predictor 'nope'" in capsys.readouterr().err
    code = main(["evaluate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1", "--rules", "symmetric",
                 "--predictor-option", "base=aarseth"])
    out = capsys.readouterr().out
    assert code == 0 and "symmetric (eta=" in out


def test_tuning_scales_inside_the_symmetric_rule(host):
    """evaluate's ScaledPredictor puts the factor into both ends of the step, so scale * eta with
    eta = 1 equals the rule built with eta = scale."""
    from nbtoolkit.evaluate import ScaledPredictor

    state, _ = two_body_orbit(e=0.7)
    scaled = ScaledPredictor(host.predictors.create("symmetric", eta=1.0), torch.tensor([0.05], dtype=torch.float64))
    direct = host.predictors.create("symmetric", eta=0.05)
    assert scaled(state).item() == pytest.approx(direct(state).item(), rel=1e-12)


def test_trains_around_a_learned_base_and_reloads(tmp_path, capsys):
    from nbtoolkit.training import load_predictor

    checkpoint = tmp_path / "sym.pt"
    code = main(["train", "--preset", "kepler", "--eccentricity", "0.6", "--epochs", "1", "--steps-per-epoch", "4",
                 "--seed", "1", "--predictor", "symmetric", "--predictor-option", "base=mlp",
                 "--predictor-option", "iterations=1", "--checkpoint", str(checkpoint)])
    assert code == 0, capsys.readouterr().err
    loaded = load_predictor(checkpoint)
    assert type(loaded).__name__ == "SymmetricDt" and loaded.iterations == 1 and loaded.trainable


def test_a_base_that_reads_the_radial_velocity_is_made_even(host):
    """The shipped network is not even under time reversal; built by name it flies inside the wrapper with its
    ``time_symmetric`` option on, and given as an object it is evaluated on the state and its reversal (and left
    as it was). Either way the wrapper's tau is even, and both give the same dt."""
    by_name = host.predictors.create("symmetric", base="learned", iterations=0)
    assert by_name.base.time_even and by_name.base.options["time_symmetric"]
    network = host.predictors.create("learned", feedback=False)
    as_object = host.predictors.create("symmetric", base=network, iterations=0)
    assert not network.time_even and not as_object.base_is_even
    state = two_body_orbit(e=0.8)[0]
    falling = host.integrators.create("leapfrog").step(state, torch.tensor([1.0], dtype=torch.float64))
    with torch.no_grad():
        assert not torch.allclose(network(falling), network(time_reversed(falling)), rtol=1e-6)
        for sym in (by_name, as_object):
            assert torch.allclose(sym(falling), sym(time_reversed(falling)), rtol=1e-13, atol=0)
        assert torch.allclose(by_name(falling), as_object(falling), rtol=1e-12, atol=0)


def test_the_learned_dt_made_symmetric_is_reversible_and_does_not_drift(host):
    """The shipped network inside the wrapper: there and back returns to the start (Kepler e = 0.8; at e = 0.9
    exactly, the bound of two safety classes, the class factor jumps along the trial steps and the secant
    iteration settles more slowly), and after 3 periods of Kepler e = 0.9 the energy error is 60 times smaller
    than the network's alone, 400 times after 5 periods. (Its dt reads each pair's radial velocity; without the
    even part the wrapper drifted more than the network alone.)"""
    state, _ = two_body_orbit(e=0.8)
    assert there_and_back(host, state, host.predictors.create("symmetric", base="learned", iterations=6), 40) < 1e-9
    leapfrog = host.integrators.create("leapfrog")
    system = make_preset("kepler", eccentricity=0.9)
    alone = simulate(system.state, leapfrog, host.predictors.create("learned", feedback=False), orbits=3,
                     period=system.period).summary()
    sym = simulate(system.state, leapfrog, host.predictors.create("symmetric", base="learned"), orbits=3,
                   period=system.period).summary()
    assert sym["final_rel_dE"] < alone["final_rel_dE"] / 30
