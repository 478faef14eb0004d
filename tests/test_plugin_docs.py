"""docs/plugins.md stays true: every hook is documented with its exact signature and (for observers)
every event field, every hook has a test, and the tutorial and examples in it run as written."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import io
import math
import os
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
import torch
from systems import random_cluster

import nbtoolkit.events as events
import nbtoolkit.hookspecs as hookspecs
import nbtoolkit.plugin_manager as plugin_manager
from nbtoolkit import NBodyState, PluginHost
from nbtoolkit.cli import main
from nbtoolkit.errors import OptionError

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "plugins.md").read_text()
TRAINING = importlib.util.find_spec("nbtoolkit.training") is not None

#: hook -> tests ("path::function") that exercise it. Adding a hook to nbtoolkit/hookspecs.py
#: without adding its test here fails test_every_hook_has_a_test.
HOOK_TESTS: dict[str, tuple[str, ...]] = {
    "nbtoolkit_register_integrators": (
        "tests/test_plugin_docs.py::test_the_tutorial_plugin_installs_registers_and_runs",
        "tests/test_plugin_system.py::test_a_fake_plugin_registers_and_unregisters",
    ),
    "nbtoolkit_register_dt_predictors": ("tests/test_plugin_docs.py::test_the_documented_predictor_registers_and_trains",),
    "nbtoolkit_register_replay_samplers": ("tests/test_plugin_docs.py::test_the_documented_sampler_registers_and_samples",),
    "nbtoolkit_register_gates": (
        "tests/test_plugin_docs.py::test_the_documented_gate_registers_and_judges",
        "tests/test_gates.py::test_a_fake_gate_plugin_registers_judges_and_unregisters",
    ),
    "nbtoolkit_register_external_fields": (
        "tests/test_plugin_docs.py::test_the_documented_field_registers_and_conserves_energy",
        "tests/test_fields.py::test_a_fake_field_plugin_registers_moves_the_system_and_unregisters",
    ),
    **{
        hook: ("tests/test_plugin_docs.py::test_the_documented_observer_receives_every_event",)
        for hook in ("nbtoolkit_register_observer_options", "nbtoolkit_fit_start", "nbtoolkit_step_accepted",
                     "nbtoolkit_step_rejected", "nbtoolkit_replay_iteration", "nbtoolkit_epoch_end", "nbtoolkit_fit_end")
    },
}


# ----------------------------------------------------------------------------- helpers
def hook_specs() -> dict[str, Callable[..., Any]]:
    """The hook specifications of nbtoolkit.hookspecs, by name."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, marker)}


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature_text(fn: Callable[..., Any]) -> str:
    """``name(arg: Type, ...) -> Return`` as written in the source."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {_annotation(p.annotation)}" for p in sig.parameters.values())
    return f"{fn.__name__}({params}) -> {_annotation(sig.return_annotation)}"


def doc_section(heading: str) -> str:
    """The text of the docs from ``heading`` (a whole heading line) to the next heading."""
    start = DOCS.index(heading + "\n") + len(heading)
    following = re.search(r"^#{2,3} ", DOCS[start:], flags=re.MULTILINE)
    return DOCS[start: start + following.start()] if following else DOCS[start:]


def doc_blocks() -> dict[str, str]:
    """Fenced code blocks of the docs whose first line is a ``# label`` comment, by label."""
    blocks = re.findall(r"^```\w+\n# (.+?)\n(.*?)^```", DOCS, flags=re.MULTILINE | re.DOTALL)
    return {label: f"# {label}\n{body}" for label, body in blocks}


def doc_module(label: str) -> types.ModuleType:
    """Execute the docs block ``label`` as a fresh module."""
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", label))
    exec(compile(doc_blocks()[label], f"docs/plugins.md [{label}]", "exec"), module.__dict__)
    return module


def isolated_host(*plugins: tuple[Any, str]) -> PluginHost:
    """A host with the default plugins only (no installed entry points) plus the given (plugin, name)."""
    host = PluginHost(load_entry_points=False)
    for plugin, name in plugins:
        host.register_plugin(plugin, name=name)
    return host


def scaled(state: NBodyState, L: float, M: float) -> NBodyState:
    """Lengths x L and masses x M with G fixed (velocities x sqrt(M / L))."""
    return NBodyState.from_arrays(state.mass * M, state.position * L, state.velocity * math.sqrt(M / L), G=state.G)


# ----------------------------------------------------------------------------- reference completeness
def test_the_hook_list_is_what_the_docs_cover():
    assert set(hook_specs()) == set(HOOK_TESTS), "update HOOK_TESTS and docs/plugins.md for the new or removed hook"


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_documented_with_its_signature(name):
    text = signature_text(hook_specs()[name])
    assert f"### `{text}`" in DOCS, f"docs/plugins.md has no heading for {text}"


def test_signatures_are_generated_as_written():
    assert signature_text(hook_specs()["nbtoolkit_register_integrators"]) == (
        "nbtoolkit_register_integrators(register: Register) -> None")
    assert signature_text(hook_specs()["nbtoolkit_epoch_end"]) == "nbtoolkit_epoch_end(event: EpochEnd) -> None"


@pytest.mark.parametrize("name", sorted(n for n, fn in hook_specs().items() if "event" in inspect.signature(fn).parameters))
def test_every_field_of_every_observer_event_is_documented(name):
    fn = hook_specs()[name]
    event_type = getattr(events, _annotation(inspect.signature(fn).parameters["event"].annotation))
    section = doc_section(f"### `{signature_text(fn)}`")
    missing = [f.name for f in dataclasses.fields(event_type) if f"`{f.name}`" not in section]
    assert not missing, f"{event_type.__name__} fields not documented under {name}: {missing}"


def test_every_attribute_of_the_dt_predictor_contract_is_documented():
    """The class attributes a DtPredictor declares (history_len, time_even, level_base, ...) are rows of its table."""
    from nbtoolkit.predictor import DtPredictor

    declared = sorted(DtPredictor.__annotations__)
    assert "level_base" in declared
    section = doc_section("### `nbtoolkit_register_dt_predictors(register: Register) -> None`")
    missing = [name for name in declared if f"| `{name}: " not in section]
    assert not missing, f"DtPredictor attributes not documented: {missing}"


def test_the_register_callback_type_is_documented_as_defined():
    assert hookspecs.Register == Callable[[str, Callable[..., Any]], None]
    assert "Register = Callable[[str, Callable[..., Any]], None]" in DOCS


def test_every_environment_variable_of_the_plugin_host_is_documented():
    source = Path(plugin_manager.__file__).read_text()
    in_code, in_docs = set(re.findall(r"NBTOOLKIT_[A-Z_]+", source)), set(re.findall(r"NBTOOLKIT_[A-Z_]+", DOCS))
    assert in_code and in_code <= in_docs


def test_the_readme_links_the_plugin_docs():
    readme = (ROOT / "README.md").read_text()
    plugins_section = readme.split("\n## Plugins\n", 1)[1].split("\n## ", 1)[0]
    assert "(docs/plugins.md)" in plugins_section


def test_every_hook_has_a_test():
    for hook, refs in HOOK_TESTS.items():
        assert refs, hook
        for ref in refs:
            path, function = ref.split("::")
            source = (ROOT / path).read_text()
            defs = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
            assert function in defs, f"{ref} (the test of {hook}) does not exist"
            body = ast.get_source_segment(source, defs[function])
            assert hook in body, f"{ref} does not name {hook}, so it cannot be checking it"


# ----------------------------------------------------------------------------- the tutorial, as written
@pytest.fixture
def tutorial_project(tmp_path, monkeypatch) -> Path:
    """The tutorial's files written out, "installed" as a dist-info built from its pyproject.toml."""
    project = tmp_path / "nbtoolkit-dkd"
    for label, text in doc_blocks().items():
        if not label.startswith("example:"):
            (project / label).parent.mkdir(parents=True, exist_ok=True)
            (project / label).write_text(text)
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = project / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    points = "".join(f"{k} = {v}\n" for k, v in meta["entry-points"]["nbtoolkit"].items())
    (info / "entry_points.txt").write_text(f"[nbtoolkit]\n{points}")
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setattr(plugin_manager, "_HOST", None)  # the CLI's host sees the tutorial plugin, then is restored
    yield project
    for name in [m for m in sys.modules if m == "nbtoolkit_dkd" or m.startswith("nbtoolkit_dkd.")]:
        del sys.modules[name]


def test_the_tutorial_plugin_installs_registers_and_runs(tutorial_project, capsys):
    host = plugin_manager.get_host()
    entry = host.integrators.get("dkd")
    assert (entry.plugin, entry.source) == ("dkd", "nbtoolkit-dkd 0.1.0")
    assert host.plugin_hooks("dkd") == ["nbtoolkit_register_integrators"]
    integrator = host.integrators.create("dkd")
    assert (integrator.order, integrator.force_evals_per_step, integrator.symplectic) == (2, 1, True)

    # the `nbtoolkit plugins` row shown in the docs
    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    shown = re.search(r"^integrator +dkd .*$", DOCS, flags=re.MULTILINE).group(0)
    assert shown.split() in rows

    # the documented command line
    command = re.search(r"^nbtoolkit simulate .*--integrator dkd.*$", DOCS, flags=re.MULTILINE).group(0)
    assert main(shlex.split(command)[1:] + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"max step \|dE/E\| +\S+", out)

    # the documented Python API
    api = re.search(r"```python\n(from nbtoolkit import get_host\n.*?)```", DOCS, flags=re.DOTALL).group(1)
    namespace: dict[str, Any] = {}
    exec(api, namespace)
    traj = namespace["traj"]
    assert traj.time[-1, 0] == pytest.approx(2 * namespace["system"].period.item(), rel=1e-12)
    assert traj.summary()["force_evals"] == traj.steps  # one force evaluation per step, as declared


def test_the_tutorial_tests_pass_as_written(tutorial_project):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tutorial_project), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_dkd.py"],
                          cwd=tutorial_project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    count = len(re.findall(r"^def test_", (tutorial_project / "tests" / "test_dkd.py").read_text(), flags=re.MULTILINE))
    assert f"{count} passed" in proc.stdout and "skipped" not in proc.stdout


# ----------------------------------------------------------------------------- the examples, as written
def test_the_documented_predictor_registers_and_trains():
    module = doc_module("example: predictor")
    host = isolated_host((module, "doc-predictor"))
    assert host.plugin_hooks("doc-predictor") == ["nbtoolkit_register_dt_predictors"]
    predictor = host.predictors.create("scaled-freefall", eta=0.1)
    state = random_cluster(3, 4)
    dt = predictor(state)
    assert dt.shape == (3,) and predictor.trainable
    L, M = 5.0, 0.2
    assert torch.allclose(predictor(scaled(state, L, M)), dt * math.sqrt(L**3 / M), rtol=1e-12)
    (grad,) = torch.autograd.grad(dt.sum(), predictor.log_eta)
    assert grad.item() == pytest.approx(dt.sum().item())  # d(exp(s) t)/ds = dt
    with pytest.raises(OptionError, match="option 'eta' of dt predictor 'scaled-freefall' \\(plugin 'doc-predictor'\\) "
                                          "must be finite and > 0; got 0.0"):
        host.predictors.create("scaled-freefall", eta=0)
    [declared] = host.predictors.get("scaled-freefall").options()
    assert (declared.name, declared.type, declared.default) == ("eta", float, 0.05)

    if TRAINING:
        from nbtoolkit.presets import make_preset
        from nbtoolkit.training import TrainConfig, Trainer

        system = make_preset("kepler-batch", num_orbits=2, e_min=0.5, e_max=0.7, seed=1)
        config = TrainConfig(predictor="scaled-freefall", predictor_options={"eta": 0.5}, epochs=1, steps_per_epoch=3,
                             replay_steps=3, replay_batch_size=4, learning_rate=0.05, seed=0)
        trainer = Trainer(config, system.state, host=host)
        assert trainer.predictor_options == {"eta": 0.5}  # what the checkpoint records
        from nbtoolkit.training.cli import plugin_options_help

        listed = plugin_options_help(host)
        assert "scaled-freefall (plugin doc-predictor):\n    eta = 0.05: dt over the free-fall time" in listed
        before = trainer.predictor.log_eta.item()
        result = trainer.fit()
        assert result.epochs_completed == 1 and trainer.total_retrains > 0
        assert trainer.predictor.log_eta.item() < before  # eta 0.5 fails the gate: training shrinks it
        assert len(trainer.buffer) == 6 and trainer.buffer.rel_dE.max().item() <= config.energy_threshold


def test_the_documented_sampler_registers_and_samples():
    training = pytest.importorskip("nbtoolkit.training", reason="the replay buffer comes with nbtoolkit.training")
    module = doc_module("example: sampler")
    host = isolated_host((module, "doc-sampler"))
    assert host.plugin_hooks("doc-sampler") == ["nbtoolkit_register_replay_samplers"]
    sampler = host.samplers.create("worst-first")
    state = random_cluster(6, 3)
    buffer = training.ReplayBuffer.like(state, capacity=16)
    rel = torch.tensor([1e-6, float("inf"), 3e-5, 1e-8, 2e-4, 5e-7], dtype=torch.float64)
    buffer.add(state, torch.full((6,), 0.01, dtype=torch.float64), rel)
    assert sampler(buffer, 3, torch.Generator().manual_seed(0)).tolist() == [1, 4, 2]
    assert sorted(sampler(buffer, 100, None).tolist()) == list(range(6))  # capped at the buffer size
    batch = training.sample_minibatch(buffer, 2, torch.Generator(), sampler)
    assert batch.indices.tolist() == [1, 4]


def test_the_documented_gate_registers_and_judges():
    from systems import two_body_orbit

    from nbtoolkit import angular_momentum
    from nbtoolkit.contracts import checked_error
    from nbtoolkit.simulate import simulate

    module = doc_module("example: gate")
    host = isolated_host((module, "doc-gate"))
    assert host.plugin_hooks("doc-gate") == ["nbtoolkit_register_gates"]
    assert host.gates.get("energy-and-spin").plugin == "doc-gate"
    gate = host.gates.create("energy-and-spin")
    state, period = two_body_orbit(e=0.6)
    dt = torch.tensor([period / 20], dtype=torch.float64, requires_grad=True)
    energy = host.gates.create("energy")
    for name, spin_at_least, spin_below in (("leapfrog", 0.0, 1e-13), ("rk4", 1e-3, 1.0)):
        new = host.integrators.create(name).step(state, dt)
        error = checked_error(gate, state, new)
        l0, l1 = (float(angular_momentum(s.mass, s.position, s.velocity).detach()) for s in (state, new))
        spin = abs(l1 - l0) / abs(l0)
        assert spin_at_least <= spin < spin_below  # leapfrog keeps L to round-off, rk4 does not
        expected = max(float(energy.error(state, new).detach()), spin)
        assert error.shape == (1,) and float(error.detach()) == pytest.approx(expected, rel=1e-12)
    (grad,) = torch.autograd.grad(error.sum(), dt)
    assert torch.isfinite(grad).all()
    blown = state.replace(position=state.position * float("inf"))
    assert checked_error(gate, state, blown).item() == float("inf")
    # the guard of simulate takes it: every step passes it
    traj = simulate(state, host.integrators.create("rk4"), host.predictors.create("constant", dt=period / 20),
                    orbits=1, period=torch.tensor([period]), guard_threshold=1e-4, gate=gate)
    assert traj.gate_error.max() <= 1e-4 and traj.guarded.any()


def test_the_documented_field_registers_and_conserves_energy():
    from nbtoolkit import state_energy
    from nbtoolkit.contracts import checked_step
    from nbtoolkit.field import field_accelerations, field_energy

    module = doc_module("example: field")
    host = isolated_host((module, "doc-field"))
    assert host.plugin_hooks("doc-field") == ["nbtoolkit_register_external_fields"]
    assert host.fields.get("log-halo").plugin == "doc-field"
    halo = host.fields.create("log-halo", v0=1.0, core=0.5)
    state = random_cluster(2, 3, seed=7).replace(field=halo)
    x = state.position.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(field_energy(state.replace(position=x)).sum(), x)
    assert torch.allclose(field_accelerations(state), -grad / state.mass.unsqueeze(-1), rtol=1e-12)
    # a body on a circular orbit of radius r far outside the core moves at v0: one period is 2 pi r / v0
    r, v = 10.0, math.sqrt(100.0 / (100.0 + 0.25))
    one = NBodyState.from_arrays([1.0], [[r, 0.0]], [[0.0, v]]).replace(field=halo)
    period, n = 2 * math.pi * r / v, 1000
    dt = torch.tensor([period / n], dtype=torch.float64)
    end, leapfrog = one, host.integrators.create("leapfrog")
    for _ in range(n):
        end = checked_step(leapfrog, end, dt)
    assert torch.allclose(end.position, one.position, atol=1e-3 * r)
    assert float((state_energy(end) - state_energy(one)).abs() / state_energy(one).abs()) < 1e-6


def _events() -> dict[str, Any]:
    """One event of each type, as the training engine would fire them (k = 2 systems, N = 2, D = 2)."""
    two = np.array([0, 1])
    return {
        "nbtoolkit_fit_start": events.FitStart(epochs=3, start_epoch=1, n_systems=2, n_bodies=2, dim=2,
                                               energy_threshold=2e-4, mass=np.ones((2, 2)), position=np.zeros((2, 2, 2))),
        "nbtoolkit_step_accepted": events.StepAccepted(
            epoch=1, step=0, systems=two, dt=np.full(2, 0.01), rel_dE=np.full(2, 1e-5), retrains=np.zeros(2, int),
            time=np.full(2, 0.01), position=np.zeros((2, 2, 2)), velocity=np.zeros((2, 2, 2)), mass=np.ones((2, 2))),
        "nbtoolkit_step_rejected": events.StepRejected(epoch=1, step=1, attempt=1, systems=two[:1], dt=np.array([0.5]),
                                                       rel_dE=np.array([np.inf]), loss=3.0),
        "nbtoolkit_replay_iteration": events.ReplayIteration(epoch=1, iteration=1, batch_size=2, pass_count=2, fail_count=0,
                                                             mean_rel_dE=1e-5, max_rel_dE=2e-5, loss=0.0),
        "nbtoolkit_epoch_end": events.EpochEnd(epoch=1, accepted_steps=2, retrains=1, replay_iterations=1,
                                               replay_converged=True, replay_skipped=False, pass_rate=1.0, loss=0.0,
                                               mean_dt=0.01, buffer_size=2, wall_time=0.5),
        "nbtoolkit_fit_end": events.FitEnd(epochs_completed=2, total_accepted=2, total_retrains=1, wall_time=0.6,
                                           stopped=True, error="boom"),
    }


def test_the_documented_observer_receives_every_event():
    module = doc_module("example: observer")
    stream = io.StringIO()
    host = isolated_host((module.RunSummary(stream), "doc-observer"))
    assert host.plugin_hooks("doc-observer") == [
        "nbtoolkit_epoch_end", "nbtoolkit_fit_end", "nbtoolkit_fit_start", "nbtoolkit_register_observer_options",
        "nbtoolkit_replay_iteration", "nbtoolkit_step_accepted", "nbtoolkit_step_rejected",
    ]
    assert host.observer_options["summary_every"] == (module.EVERY, "doc-observer")
    for hook, event in _events().items():
        getattr(host.hook, hook)(event=event)
    assert stream.getvalue().splitlines() == [
        "training 2 systems from epoch 1 to 3",
        "epoch 1: 2 accepted, mean dt 0.01",
        "failed: boom: 2 accepted, 1 rejected, 1 replays",
    ]

    if TRAINING:  # and from a real (tiny) training run
        from nbtoolkit.presets import make_preset
        from nbtoolkit.training import TrainConfig, Trainer

        stream.seek(0)
        stream.truncate()
        system = make_preset("kepler-batch", num_orbits=2, e_min=0.3, e_max=0.5, seed=0)
        config = TrainConfig(epochs=2, steps_per_epoch=3, replay_steps=3, replay_batch_size=4,
                             predictor_options={"hidden_width": 8}, observer_options={"summary_every": 2}, seed=0)
        Trainer(config, system.state, host=host).fit()
        lines = stream.getvalue().splitlines()
        assert lines[0] == "training 2 systems from epoch 0 to 2"
        assert lines[1].startswith("epoch 1: 6 accepted") and len(lines) == 3  # every second epoch
        assert lines[2].startswith("done: 12 accepted")
        with pytest.raises(OptionError, match="option 'summary_every' of observer plugin 'doc-observer' must be >= 1"):
            Trainer(config.replace(observer_options={"summary_every": 0}), system.state, host=host)


def test_the_documented_acceleration_cache_is_reused_and_correct():
    import nbtoolkit.physics as physics
    from nbtoolkit.presets import make_preset

    module = doc_module("example: integrator with acceleration cache")
    integrator = module.CachedLeapfrog()
    state = make_preset("kepler", eccentricity=0.5).state
    dt = torch.full((1,), 1e-3, dtype=torch.float64)
    first = integrator.step(state, dt)
    assert first.acceleration is not None
    torch.testing.assert_close(first.acceleration, physics.state_accelerations(first.replace(acceleration=None)))
    calls = []
    original = module.accelerations
    module.accelerations = lambda *a: calls.append(1) or original(*a)
    try:
        second = integrator.step(first, dt)
    finally:
        module.accelerations = original
    assert len(calls) == 1  # the incoming cache was used, only the new positions cost a force evaluation
    reference = host_leapfrog_step(first, dt)
    torch.testing.assert_close(second.position, reference.position)


def host_leapfrog_step(state, dt):
    return isolated_host().integrators.create("leapfrog").step(state, dt)
