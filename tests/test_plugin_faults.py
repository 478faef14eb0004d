"""Fault isolation: deliberately broken plugins, installed as distributions or registered at run time.

Each fault gives an error or warning naming the plugin and what was wrong, and the other
plugins keep working: at load time (raises on import, non-callable factory, wrong hook
signature, misspelt hook, reused name) and at run time (an integrator returning a wrong shape,
non-finite values, a wrong time, another type, or raising).
"""

from __future__ import annotations

import math
import re
import sys
import textwrap
from collections.abc import Callable

import pytest
import torch
from systems import random_cluster, two_body_orbit

import nbtoolkit.plugin_manager as plugin_manager
from nbtoolkit import Integrator, NBodyState, PluginHost, System, hookimpl
from nbtoolkit.cli import main
from nbtoolkit.contracts import checked_step
from nbtoolkit.errors import PluginError
from nbtoolkit.physics import state_accelerations
from nbtoolkit.registry import describe
from nbtoolkit.simulate import simulate

#: a healthy plugin module shipped in the same distribution as the broken ones
GOOD_MODULE = '''
from nbtoolkit import hookimpl
from nbtoolkit.integrator import Integrator
from nbtoolkit.physics import state_accelerations

class EulerCromer(Integrator):
    """Symplectic Euler: kick then drift (1st order, one force evaluation)."""
    order = 1
    force_evals_per_step = 1
    symplectic = True

    def step(self, state, dt):
        h = dt[:, None, None]
        v = state.velocity + h * state_accelerations(state)
        return state.replace(position=state.position + h * v, velocity=v, time=state.time + dt)

@hookimpl
def nbtoolkit_register_integrators(register):
    register("euler-cromer", EulerCromer)
'''

DIST = "nbt-faulty-plugins 0.3.0"


@pytest.fixture
def install(tmp_path, monkeypatch) -> Callable[[dict[str, str], dict[str, str]], None]:
    """``install(modules, entry_points)``: a distribution ``nbt-faulty-plugins 0.3.0`` on sys.path
    (a dist-info directory) with the given modules (name -> source) and entry points of group
    ``nbtoolkit`` (name -> module), plus the healthy ``good`` plugin. The process-wide host is
    replaced by a fresh one for the test and restored afterwards."""
    added: list[str] = []

    def _install(modules: dict[str, str], entry_points: dict[str, str]) -> None:
        modules = {"nbt_fault_good": GOOD_MODULE, **modules}
        entry_points = {"good": "nbt_fault_good", **entry_points}
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            added.append(name)
        info = tmp_path / "nbt_faulty_plugins-0.3.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nbt-faulty-plugins\nVersion: 0.3.0\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[nbtoolkit]\n{lines}")
        monkeypatch.syspath_prepend(str(tmp_path))

    monkeypatch.setattr(plugin_manager, "_HOST", None)
    yield _install
    for name in added:
        sys.modules.pop(name, None)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plugins_listing(capsys) -> tuple[list[list[str]], str]:
    """Rows of ``nbtoolkit plugins --verbose`` (split on whitespace) and its whole output."""
    code, out, _ = run_cli(capsys, "plugins", "--verbose")
    assert code == 0
    return [line.split() for line in out.split("\nplugins:")[0].splitlines()[1:]], out


def assert_others_work(capsys) -> None:
    """The defaults and the healthy plugin of the broken distribution still list and simulate."""
    host = plugin_manager.get_host()
    assert {"leapfrog", "yoshida4", "rk4", "euler-cromer"} <= set(host.integrators.names())
    assert host.integrators.get("euler-cromer").source == DIST
    for integ in ("euler-cromer", "leapfrog"):
        code, out, err = run_cli(capsys, "simulate", "--preset", "kepler", "--integrator", integ, "--predictor",
                                 "constant", "--dt", "0.01", "--steps", "5", "--quiet")
        assert code == 0, err
        assert "steps              5" in out


# ----------------------------------------------------------------------------- load time
def test_a_plugin_raising_on_import_is_named_with_its_distribution(install, capsys):
    install({"nbt_fault_import": "import nbt_missing_dependency\n"}, {"broken": "nbt_fault_import"})
    with pytest.warns(RuntimeWarning, match="plugin 'broken' failed at import"):
        rows, out = plugins_listing(capsys)
    assert ("plugin 'broken' failed at import: ModuleNotFoundError: No module named 'nbt_missing_dependency' "
            f"(entry point 'broken = nbt_fault_import' of {DIST})") in out
    assert ["integrator", "euler-cromer", "good", *DIST.split()] in rows
    assert_others_work(capsys)


def test_a_non_callable_factory_is_named_and_skipped(install, capsys):
    install({"nbt_fault_value": '''
        from nbtoolkit import hookimpl

        @hookimpl
        def nbtoolkit_register_dt_predictors(register):
            register("magic-dt", 0.01)
    '''}, {"valuer": "nbt_fault_value"})
    with pytest.warns(RuntimeWarning, match="not callable"):
        rows, out = plugins_listing(capsys)
    assert ("plugin 'valuer' failed at nbtoolkit_register_dt_predictors: PluginError: plugin 'valuer' registered "
            "dt predictor 'magic-dt' with a factory that is not callable (float)") in out
    assert not any("magic-dt" in row for row in rows)
    assert_others_work(capsys)


def test_a_hookimpl_with_a_wrong_signature_rejects_that_plugin_only(install, capsys):
    install({"nbt_fault_signature": '''
        from nbtoolkit import hookimpl

        @hookimpl
        def nbtoolkit_register_integrators(register, options):
            register("never", object)
    '''}, {"signature": "nbt_fault_signature"})
    with pytest.warns(RuntimeWarning, match="plugin 'signature' failed at register"):
        _, out = plugins_listing(capsys)
    failure = next(line for line in out.splitlines() if "plugin 'signature'" in line)
    assert "nbtoolkit_register_integrators" in failure and "options" in failure and DIST in failure
    assert "never" not in plugin_manager.get_host().integrators
    assert_others_work(capsys)


def test_a_misspelt_hook_is_named_with_a_suggestion_and_does_not_break_loading(install, capsys):
    install({"nbt_fault_typo": '''
        from nbtoolkit import hookimpl

        @hookimpl
        def nbtoolkit_register_integrator(register):
            register("typo", object)
    '''}, {"typo": "nbt_fault_typo"})
    with pytest.warns(RuntimeWarning, match="unknown hook"):
        _, out = plugins_listing(capsys)
    assert ("plugin 'typo' failed at register: implements unknown hook(s) nbtoolkit_register_integrator "
            f"(did you mean nbtoolkit_register_integrators?) ({DIST})") in out
    host = plugin_manager.get_host()
    assert host.pm.get_plugin("typo") is None
    host.pm.check_pending()  # nothing unspecified is left behind
    assert_others_work(capsys)


def test_a_factory_with_a_wrong_signature_fails_to_build_naming_the_plugin(install, capsys):
    install({"nbt_fault_factory": '''
        from nbtoolkit import hookimpl
        from nbt_fault_good import EulerCromer

        def make(order):
            return EulerCromer()

        @hookimpl
        def nbtoolkit_register_integrators(register):
            register("needs-order", make)
    '''}, {"factory": "nbt_fault_factory"})
    host = plugin_manager.get_host()
    with pytest.raises(PluginError, match=r"integrator 'needs-order' from plugin 'factory' failed to build: "
                                          r"TypeError: .*missing 1 required positional argument: 'order'"):
        host.integrators.create("needs-order")
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--integrator", "needs-order", "--steps", "2")
    assert code == 2 and "plugin 'factory' failed to build" in err and "Traceback" not in err
    assert_others_work(capsys)


def test_a_plugin_reusing_a_default_name_is_reported_and_the_default_kept(install, capsys):
    install({"nbt_fault_clash": '''
        from nbtoolkit import hookimpl
        from nbt_fault_good import EulerCromer

        @hookimpl
        def nbtoolkit_register_integrators(register):
            register("leapfrog", EulerCromer)
    '''}, {"clash": "nbt_fault_clash"})
    with pytest.warns(RuntimeWarning, match="registered twice"):
        rows, out = plugins_listing(capsys)
    assert ("plugin 'clash' failed at nbtoolkit_register_integrators: DuplicateNameError: integrator 'leapfrog' is "
            "registered twice: by plugin 'plugins.integrators' and by plugin 'clash'") in out
    assert ["integrator", "leapfrog", "plugins.integrators", "module", "plugins.integrators"] in rows
    assert_others_work(capsys)


def test_an_entry_point_reusing_a_plugin_name_is_reported(install, capsys):
    install({}, {"plugins.integrators": "nbt_fault_good"})
    with pytest.warns(RuntimeWarning, match="already taken"):
        _, out = plugins_listing(capsys)
    assert ("plugin 'plugins.integrators' failed at register: the plugin name is already taken by module "
            f"plugins.integrators; entry point 'plugins.integrators = nbt_fault_good' of {DIST} was not loaded") in out
    assert plugin_manager.get_host().integrators.get("leapfrog").plugin == "plugins.integrators"
    assert_others_work(capsys)


# ----------------------------------------------------------------------------- run time
def _kick_drift(state: NBodyState, dt: torch.Tensor) -> NBodyState:
    h = dt[:, None, None]
    v = state.velocity + h * state_accelerations(state)
    return state.replace(position=state.position + h * v, velocity=v, time=state.time + dt)


class DropsABody(Integrator):
    def step(self, state, dt):
        new = _kick_drift(state, dt)
        return new.replace(position=new.position[:, :1])


class NaNVelocity(Integrator):
    def step(self, state, dt):
        new = _kick_drift(state, dt)
        return new.replace(velocity=new.velocity * float("nan"))


class InfInLastSystem(Integrator):
    def step(self, state, dt):
        new = _kick_drift(state, dt)
        bad = torch.zeros_like(new.position)
        bad[-1, 0, 0] = float("inf")
        return new.replace(position=new.position + bad)


class ForgetsTime(Integrator):
    def step(self, state, dt):
        return _kick_drift(state, dt).replace(time=state.time)


class ReturnsTuple(Integrator):
    def step(self, state, dt):
        new = _kick_drift(state, dt)
        return new.position, new.velocity


class Raises(Integrator):
    def step(self, state, dt):
        return state.position[:, 5]


class ChangesMass(Integrator):
    def step(self, state, dt):
        return _kick_drift(state, dt).replace(mass=state.mass * 2)


class FaultyRuntimePlugin:
    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("drops-a-body", DropsABody)
        register("nan-velocity", NaNVelocity)
        register("inf-in-last-system", InfInLastSystem)
        register("forgets-time", ForgetsTime)
        register("returns-tuple", ReturnsTuple)
        register("raises", Raises)
        register("changes-mass", ChangesMass)


@pytest.fixture
def faulty(host, register_plugin):
    """The process-wide host with the run-time faulty plugin registered (removed afterwards)."""
    register_plugin(FaultyRuntimePlugin(), "faulty-runtime")
    return host


RUNTIME_FAULTS = {
    "drops-a-body": r"returned position of shape \(3, 1, 3\) for an input of shape \(3, 4, 3\)",
    "nan-velocity": r"returned a non-finite velocity \(nan\) for system 0 from a finite state with dt = 0.01",
    "inf-in-last-system": r"returned a non-finite position \(inf\) for system 2 from a finite state",
    "forgets-time": r"system 0 has time 0.0 after a step of dt = 0.01 from time 0.0; expected 0.01",
    "returns-tuple": r"step\(\) returned tuple, not an NBodyState",
    "raises": r"raised IndexError in step\(\): index 5 is out of bounds",
    "changes-mass": r"changed the masses of system 0",
}


@pytest.mark.parametrize("name", sorted(RUNTIME_FAULTS))
def test_an_integrator_breaking_its_contract_at_run_time_is_named(faulty, name):
    state = random_cluster(3, 4, softening=0.1)
    predictor = faulty.predictors.create("constant", dt=0.01)
    with pytest.raises(PluginError) as info:
        simulate(state, faulty.integrators.create(name), predictor, steps=3)
    message = str(info.value)
    assert message.startswith(f"integrator '{name}' (plugin 'faulty-runtime' from object faulty-runtime)")
    assert re.search(RUNTIME_FAULTS[name], message), message
    # the rest keep working on the same host
    traj = simulate(state, faulty.integrators.create("leapfrog"), predictor, steps=3)
    assert traj.steps == 3


def test_the_cli_reports_a_run_time_fault_in_one_paragraph(faulty, capsys):
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--integrator", "nan-velocity", "--predictor",
                           "constant", "--dt", "0.01", "--steps", "4", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("nbtoolkit simulate: error: integrator 'nan-velocity' (plugin 'faulty-runtime'")
    assert "non-finite velocity" in err


def test_a_fault_during_a_guard_retry_is_caught_too(host):
    class FineOnlyForLargeSteps(Integrator):
        def step(self, state, dt):
            new = _kick_drift(state, dt)
            return new if bool((dt > 0.05).all()) else new.replace(velocity=new.velocity * float("nan"))

    state, _ = two_body_orbit(e=0.9)
    predictor = host.predictors.create("constant", dt=0.08)
    with pytest.raises(PluginError, match=r"FineOnlyForLargeSteps.*non-finite velocity \(nan\) .*dt = 0.04"):
        simulate(state, FineOnlyForLargeSteps(), predictor, steps=50, guard_threshold=1e-12)


def test_a_blow_up_from_an_absurd_dt_is_not_blamed_on_the_integrator(host):
    """Overflow is the expected outcome of dt = 1e300: the energy error reports it (inf), no fault."""
    state, _ = two_body_orbit(e=0.5)
    leapfrog = host.integrators.create("leapfrog")
    out = checked_step(leapfrog, state, torch.tensor([1e300], dtype=torch.float64))
    assert not bool(torch.isfinite(out.position).all())
    traj = simulate(state, leapfrog, host.predictors.create("constant", dt=1e300), steps=1)
    assert math.isinf(traj.rel_dE[0, 0])


def test_huge_but_finite_results_of_a_too_large_dt_pass(host):
    state, period = two_body_orbit(e=0.9)
    out = checked_step(host.integrators.create("rk4"), state, torch.tensor([50 * period], dtype=torch.float64))
    assert bool(torch.isfinite(out.position).all())


def test_an_integrator_is_named_by_the_identity_its_registry_stamped_on_it(host):
    assert describe(host.integrators.create("yoshida4"), "integrator") == (
        "integrator 'yoshida4' (plugin 'plugins.integrators' from module plugins.integrators)")
    assert describe(Raises(), "integrator") == (
        f"integrator Raises (class {__name__}.Raises, not built by a plugin registry)")

    class FactoryPlugin:
        @hookimpl
        def nbtoolkit_register_integrators(self, register):
            register("made-by-function", make_drops_a_body)

    local = PluginHost((), load_entry_points=False)
    local.register_plugin(FactoryPlugin(), name="function-factory")
    built = local.integrators.create("made-by-function")  # no name travels with it but its identity
    state = random_cluster(2, 3)
    with pytest.raises(PluginError, match=r"^integrator 'made-by-function' \(plugin 'function-factory' from object "
                                          r"function-factory\) broke the integrator contract"):
        checked_step(built, state, torch.full((2,), 1e-3, dtype=torch.float64))


def test_the_oracle_and_the_calibration_step_through_the_check_too(host):
    """Every loop that steps states checks the integrator, not only simulate and training."""
    from nbtoolkit.evaluate import greedy_oracle
    from nbtoolkit.training.calibrate import max_passing_scale

    state, period = two_body_orbit(e=0.5)
    with pytest.raises(PluginError, match="integrator ChangesMass .*changed the masses"):
        greedy_oracle(System(state, torch.tensor([period])), ChangesMass(), orbits=0.1)
    with pytest.raises(PluginError, match="integrator ChangesMass .*changed the masses"):
        max_passing_scale(ChangesMass(), state, torch.tensor([1e-3], dtype=torch.float64),
                          torch.tensor([0.5, 1.0], dtype=torch.float64), 2e-4)


def make_drops_a_body() -> Integrator:
    """A factory function living in the same module as the class it builds."""
    return DropsABody()
