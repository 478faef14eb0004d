"""The plugin host: default plugins by module path, entry points, registries, failures."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from nbtoolkit import Integrator, PluginHost, hookimpl
from nbtoolkit.errors import DuplicateNameError, PluginError, UnknownNameError
from nbtoolkit.plugin_manager import DEFAULT_PLUGINS
from nbtoolkit.registry import Registry


class EulerIntegrator(Integrator):
    order = 1
    force_evals_per_step = 1

    def step(self, state, dt):
        from nbtoolkit.physics import state_accelerations

        h = dt[:, None, None]
        return state.replace(
            position=state.position + h * state.velocity,
            velocity=state.velocity + h * state_accelerations(state),
            time=state.time + dt,
        )


class FakeIntegratorPlugin:
    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("fake-euler", EulerIntegrator)


@pytest.fixture
def fake_plugin(register_plugin):
    return register_plugin(FakeIntegratorPlugin(), "fake-euler-plugin")


def test_defaults_are_registered_by_module_path(host):
    assert {"leapfrog", "yoshida4", "rk4"} <= set(host.integrators.names())
    assert {"constant", "aarseth", "freefall"} <= set(host.predictors.names())
    assert host.integrators.get("leapfrog").plugin == "plugins.integrators"
    assert host.predictors.get("freefall").source == "module plugins.classical_predictors"
    assert all(host.pm.get_plugin(p) is not None for p in DEFAULT_PLUGINS)
    assert host.failures == []


def test_a_fake_plugin_registers_and_unregisters(host, fake_plugin):
    entry = host.integrators.get("fake-euler")
    assert entry.plugin == "fake-euler-plugin"
    integ = host.integrators.create("fake-euler")
    assert integ.order == 1
    assert "nbtoolkit_register_integrators" in host.plugin_hooks("fake-euler-plugin")


def test_fake_plugin_is_gone_after_unregistering(host):
    name = host.register_plugin(FakeIntegratorPlugin(), name="temporary")
    host.unregister_plugin(name)
    assert "fake-euler" not in host.integrators
    assert "leapfrog" in host.integrators


def test_unknown_name_lists_the_known_ones(host):
    known = r"known: ([\w-]+, )*leapfrog, ([\w-]+, )*rk4, ([\w-]+, )*yoshida4"
    with pytest.raises(UnknownNameError, match=r"unknown integrator 'nope'; " + known):
        host.integrators.get("nope")


def test_duplicate_name_is_an_error_naming_both_plugins():
    registry = Registry("integrator")
    registry.add("leapfrog", EulerIntegrator, "first-plugin")
    with pytest.raises(DuplicateNameError, match="'first-plugin' and by plugin 'second-plugin'"):
        registry.add("leapfrog", EulerIntegrator, "second-plugin")


def test_a_plugin_reusing_a_name_is_reported_and_the_original_kept(host):
    class Clash:
        @hookimpl
        def nbtoolkit_register_integrators(self, register):
            register("leapfrog", EulerIntegrator)
            register("clash-only", EulerIntegrator)

    with pytest.warns(RuntimeWarning, match="registered twice"):
        host.register_plugin(Clash(), name="clash")
    try:
        assert host.integrators.get("leapfrog").plugin == "plugins.integrators"
        messages = [str(f) for f in host.failures]
        assert any("clash" in m and "plugins.integrators" in m for m in messages)
    finally:
        host.unregister_plugin("clash")
    assert host.failures == []


def test_a_plugin_that_raises_while_registering_does_not_take_others_down(host, register_plugin):
    class Broken:
        @hookimpl
        def nbtoolkit_register_dt_predictors(self, register):
            raise RuntimeError("boom")

    with pytest.warns(RuntimeWarning, match="boom"):
        register_plugin(Broken(), "broken")
    assert any(f.plugin == "broken" and "RuntimeError: boom" in f.reason for f in host.failures)
    assert {"constant", "aarseth", "freefall"} <= set(host.predictors.names())


def test_a_non_callable_factory_is_rejected_naming_the_plugin(host, register_plugin):
    class NotCallable:
        @hookimpl
        def nbtoolkit_register_integrators(self, register):
            register("bad", 42)

    with pytest.warns(RuntimeWarning, match="not callable"):
        register_plugin(NotCallable(), "not-callable")
    assert "bad" not in host.integrators
    assert any(f.plugin == "not-callable" for f in host.failures)


def test_a_default_plugin_that_fails_to_import_is_reported_by_name():
    with pytest.warns(RuntimeWarning, match="plugins.does_not_exist"):
        host = PluginHost(("plugins.integrators", "plugins.does_not_exist"), load_entry_points=False)
    assert "leapfrog" in host.integrators
    (failure,) = host.failures
    assert failure.plugin == "plugins.does_not_exist" and failure.stage == "import"
    assert "ModuleNotFoundError" in failure.reason


def test_a_hookimpl_with_a_wrong_signature_is_rejected_at_registration():
    class WrongSignature:
        @hookimpl
        def nbtoolkit_register_integrators(self, register, extra):
            pass

    host = PluginHost((), load_entry_points=False)
    with pytest.warns(RuntimeWarning, match="can not be found in the hookspec"):
        with pytest.raises(PluginError, match="wrong-signature"):
            host.register_plugin(WrongSignature(), name="wrong-signature")


@pytest.fixture
def installed_distribution(tmp_path, monkeypatch):
    """A real installed distribution (dist-info on sys.path) with an entry point of group nbtoolkit."""
    (tmp_path / "nbt_fake_plugin.py").write_text(textwrap.dedent('''
        from nbtoolkit import hookimpl
        from nbtoolkit.integrator import Integrator

        class Drift(Integrator):
            order = 1
            def step(self, state, dt):
                return state.replace(position=state.position + dt[:, None, None] * state.velocity, time=state.time + dt)

        @hookimpl
        def nbtoolkit_register_integrators(register):
            register("drift", Drift)
    '''))
    (tmp_path / "nbt_broken_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    info = tmp_path / "nbt_fake_plugin-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nbt-fake-plugin\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[nbtoolkit]\ndrift = nbt_fake_plugin\nbroken = nbt_broken_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for mod in ("nbt_fake_plugin", "nbt_broken_plugin"):
        sys.modules.pop(mod, None)


def test_entry_point_plugins_are_discovered_with_their_distribution(installed_distribution):
    with pytest.warns(RuntimeWarning, match="missing dependency xyz"):
        host = PluginHost()
    entry = host.integrators.get("drift")
    assert entry.plugin == "drift" and entry.source == "nbt-fake-plugin 1.2.3"
    assert "leapfrog" in host.integrators  # defaults unaffected by the broken one
    (failure,) = [f for f in host.failures if f.plugin == "broken"]
    assert failure.stage == "import" and "missing dependency xyz" in failure.reason


def test_block_and_allow_lists_from_the_environment(installed_distribution, monkeypatch):
    monkeypatch.setenv("NBTOOLKIT_BLOCK_PLUGINS", "broken, plugins.classical_predictors")
    host = PluginHost()
    assert host.failures == [] and "drift" in host.integrators
    assert not {"constant", "aarseth", "freefall"} & set(host.predictors.names())
    monkeypatch.delenv("NBTOOLKIT_BLOCK_PLUGINS")
    monkeypatch.setenv("NBTOOLKIT_ONLY_PLUGINS", "plugins.integrators")
    host = PluginHost()
    assert host.integrators.names() == ["leapfrog", "rk4", "yoshida4"] and len(host.predictors) == 0


def test_hook_tracing_writes_calls_to_stderr(capsys):
    PluginHost(("plugins.integrators",), load_entry_points=False, trace=True)
    assert "nbtoolkit_register_integrators" in capsys.readouterr().err


def test_integrator_from_a_plugin_steps_a_state(host, fake_plugin):
    from systems import two_body_orbit

    state, _ = two_body_orbit()
    out = host.integrators.create("fake-euler").step(state, torch.tensor([0.1], dtype=torch.float64))
    assert out.time.item() == pytest.approx(0.1)


def test_a_module_object_default_registers_the_object_under_its_entry():
    from plugins import observers

    host = PluginHost(("plugins.integrators", "plugins.observers:metrics_log"), load_entry_points=False)
    assert host.pm.get_plugin("plugins.observers:metrics_log") is observers.metrics_log
    assert host.sources["plugins.observers:metrics_log"] == "module plugins.observers"
    assert "nbtoolkit_epoch_end" in host.plugin_hooks("plugins.observers:metrics_log")
    assert host.pm.get_plugin("plugins.observers") is None  # the module itself is no plugin: no fan-out
    with pytest.warns(RuntimeWarning, match="plugin 'plugins.observers:nothing' failed at import: AttributeError"):
        host = PluginHost(("plugins.observers:nothing",), load_entry_points=False)
    assert [f.plugin for f in host.failures] == ["plugins.observers:nothing"]


def test_a_module_path_in_the_block_and_only_lists_names_its_object_defaults(monkeypatch):
    monkeypatch.setenv("NBTOOLKIT_BLOCK_PLUGINS", "plugins.observers")
    host = PluginHost(load_entry_points=False)
    assert not {p for p in host.sources if p.startswith("plugins.observers")}
    assert set(host.skipped) == {"plugins.observers:progress_bar", "plugins.observers:metrics_log"}
    monkeypatch.delenv("NBTOOLKIT_BLOCK_PLUGINS")
    monkeypatch.setenv("NBTOOLKIT_ONLY_PLUGINS", "plugins.integrators,plugins.observers:metrics_log")
    host = PluginHost(load_entry_points=False)
    assert sorted(host.sources) == ["plugins.integrators", "plugins.observers:metrics_log"]


def test_the_default_observers_are_isolated_from_each_other(host, monkeypatch, tmp_path):
    """The progress bar raising disables it alone: the metrics log, a plugin of its own, keeps logging."""
    from nbtoolkit.events import FitEnd, FitStart
    from plugins import observers

    @hookimpl
    def broken(self, event):
        raise RuntimeError("bar broke")

    log = tmp_path / "run.jsonl"
    monkeypatch.setattr(observers.ProgressBar, "nbtoolkit_fit_start", broken)
    local = PluginHost(load_entry_points=False)
    start = FitStart(epochs=1, start_epoch=0, n_systems=1, n_bodies=2, dim=2, energy_threshold=2e-4,
                     mass=np.ones((1, 2)), position=np.zeros((1, 2, 2)),
                     config={"observer_options": {"progress": False, "metrics_log": str(log)}})
    with pytest.warns(RuntimeWarning, match="observer plugin 'plugins.observers:progress_bar'.*bar broke"):
        local.hook.nbtoolkit_fit_start(event=start)
    local.hook.nbtoolkit_fit_end(event=FitEnd(epochs_completed=1, total_accepted=0, total_retrains=0, wall_time=0.0,
                                              stopped=False, error=None))
    assert local.disabled_observers == {"plugins.observers:progress_bar"}
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()] == ["FitStart", "FitEnd"]
