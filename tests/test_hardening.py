"""Bad input, faults and plugin-author cases: each is a clear error naming the culprit, never a
traceback, a hang or a silent wrong result."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from nbtoolkit import NBodyState, hookimpl
from nbtoolkit.atomic import atomic_write, remove_stale_temporaries
from nbtoolkit.cli import main
from nbtoolkit.errors import ConfigError, InvalidStateError, InvalidTimestepError, StateFileError
from nbtoolkit.evaluate import greedy_oracle, tune_scale
from nbtoolkit.io import load_state, save_state
from nbtoolkit.plugin_manager import PluginHost
from nbtoolkit.presets import make_preset
from nbtoolkit.simulate import simulate
from nbtoolkit.training import CheckpointError, TrainConfig, Trainer, load_predictor, read_checkpoint
from nbtoolkit.training.checkpoint import payload_digest
from nbtoolkit.training.config import read_toml

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(predictor_options={"hidden_width": 8, "hidden_layers": 1}, steps_per_epoch=4, replay_batch_size=8,
             replay_steps=10)


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse rejects a flag
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- numeric flags
@pytest.mark.parametrize("argv, flag", [
    (["simulate", "--preset", "kepler", "--orbits", "inf"], "--orbits"),
    (["simulate", "--preset", "kepler", "--orbits", "nan"], "--orbits"),
    (["simulate", "--preset", "kepler", "--orbits", "-2"], "--orbits"),
    (["simulate", "--preset", "kepler", "--t-end", "inf"], "--t-end"),
    (["simulate", "--preset", "kepler", "--t-end", "nan"], "--t-end"),
    (["simulate", "--preset", "kepler", "--steps", "3", "--guard", "--guard-threshold", "-1"], "--guard-threshold"),
    (["simulate", "--preset", "kepler", "--steps", "3", "--guard", "--guard-threshold", "nan"], "--guard-threshold"),
    (["simulate", "--preset", "kepler", "--steps", "3", "--max-halvings", "-1"], "--max-halvings"),
    (["simulate", "--preset", "kepler", "--steps", "3", "--max-steps", "0"], "--max-steps"),
    (["simulate", "--preset", "kepler", "--steps", "3", "--predictor", "constant", "--dt", "nan"], "--dt"),
    (["evaluate", "--orbits", "inf"], "--orbits"),
    (["evaluate", "--threshold", "nan"], "--threshold"),
    (["evaluate", "--threshold", "-1"], "--threshold"),
    (["train", "--preset", "kepler", "--threads", "-1"], "--threads"),
    (["gui", "--headless", "--epochs", "0"], "--epochs"),
])
def test_non_finite_or_out_of_range_flags_are_refused_naming_the_flag(capsys, argv, flag):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert f"argument {flag}:" in err and "Traceback" not in err


@pytest.mark.parametrize("kwargs, name", [
    (dict(t_end=math.inf), "t_end"), (dict(t_end=math.nan), "t_end"), (dict(orbits=math.inf), "orbits"),
    (dict(steps=3, guard_threshold=-1.0), "guard_threshold"), (dict(steps=3, guard_threshold=math.nan), "guard_threshold"),
    (dict(steps=3, max_halvings=-1), "max_halvings"),
])
def test_simulate_api_validates_run_parameters(host, kwargs, name):
    system = make_preset("kepler")
    with pytest.raises(ConfigError, match=name):
        simulate(system.state, host.integrators.create("leapfrog"), host.predictors.create("freefall"),
                 period=system.period, **kwargs)


def test_evaluation_functions_validate_threshold_and_orbits(host):
    system = make_preset("kepler")
    integrator, base = host.integrators.create("leapfrog"), host.predictors.create("freefall", eta=1.0)
    with pytest.raises(ConfigError, match="threshold"):
        tune_scale(system, integrator, base, orbits=1, threshold=math.nan)
    with pytest.raises(ConfigError, match="orbits"):
        greedy_oracle(system, integrator, orbits=math.inf)


def test_a_constant_dt_that_would_exceed_the_step_cap_is_refused_up_front(capsys):
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--predictor", "constant", "--dt", "1e-300",
                           "--t-end", "1")
    assert code == 2 and "max_steps" in err and "1e-300" in err
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------- states
def test_zero_energy_states_are_refused_with_a_clear_error(host):
    lone = NBodyState.from_arrays([1.0], [[0.0, 0.0]], [[0.0, 0.0]])
    r, m = 1.0, 1.0
    v = math.sqrt(2 * m * 2 / r) / 2  # each body at half the parabolic relative speed sqrt(2 G M / r)
    parabolic = NBodyState.from_arrays([m, m], [[-r / 2, 0.0], [r / 2, 0.0]], [[0.0, -v], [0.0, v]])
    integrator, predictor = host.integrators.create("leapfrog"), host.predictors.create("constant", dt=0.01)
    for state in (lone, parabolic):
        with pytest.raises(InvalidStateError, match="zero to round-off"):
            simulate(state, integrator, predictor, steps=2)
    with pytest.raises(InvalidStateError, match="training state: system 0"):
        Trainer(TrainConfig(epochs=1, **SMALL), parabolic)


def test_complex_and_non_numeric_arrays_are_refused():
    with pytest.raises(InvalidStateError, match="position.*complex"):
        NBodyState.from_arrays([1.0, 1.0], np.array([[0, 0], [1, 0]], dtype=complex), [[0, 0], [0, 1.0]])
    with pytest.raises(InvalidStateError, match="mass.*complex"):
        NBodyState.from_arrays(torch.tensor([1 + 1j, 1.0]), [[0, 0], [1, 0.0]], [[0, 0], [0, 1.0]])
    with pytest.raises(InvalidStateError, match="'G' must be a real number"):
        NBodyState.from_arrays([1.0, 1.0], [[0, 0], [1, 0.0]], [[0, 0], [0, 1.0]], G=1 + 2j)
    with pytest.raises(InvalidStateError, match="velocity"):
        NBodyState.from_arrays([1.0, 1.0], [[0, 0], [1, 0.0]], [["a", "b"], ["c", "d"]])


def _npz_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


GOOD = {"mass": np.array([1.0, 1.0]), "position": np.array([[0.0, 0.0], [1.0, 0.0]]),
        "velocity": np.array([[0.0, -0.5], [0.0, 0.5]])}


def test_state_files_with_unreadable_dtypes_are_named(tmp_path):
    if np.dtype(np.longdouble).itemsize > 8:
        np.savez(tmp_path / "f128.npz", **{**GOOD, "mass": GOOD["mass"].astype(np.longdouble)})
        with pytest.raises(StateFileError, match="'mass'.*at most 64 bits"):
            load_state(tmp_path / "f128.npz")
    np.savez(tmp_path / "text.npz", **{**GOOD, "position": np.array([["a", "b"], ["c", "d"]])})
    with pytest.raises(StateFileError, match="'position'.*real numbers"):
        load_state(tmp_path / "text.npz")


def test_a_zip_member_that_is_not_npy_is_named(tmp_path):
    path = _npz_with(tmp_path / "raw.npz", {"mass": b"1.0 1.0", "position.npy": _npy_bytes(GOOD["position"]),
                                            "velocity.npy": _npy_bytes(GOOD["velocity"])})
    with pytest.raises(StateFileError, match="'mass' is not a .npy array"):
        load_state(path)
    path = _npz_with(tmp_path / "junk.npz", {"mass.npy": b"not an npy file at all", "position.npy": b"",
                                             "velocity.npy": b""})
    with pytest.raises(StateFileError, match="'mass' is not a valid .npy array"):
        load_state(path)


def test_an_unsupported_zip_compression_is_named(tmp_path):
    path = tmp_path / "odd.npz"
    np.savez(path, **GOOD)
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = 0
        while (i := raw.find(signature, start)) >= 0:
            raw[i + offset:i + offset + 2] = (99).to_bytes(2, "little")  # AES / unknown method
            start = i + 4
    path.write_bytes(bytes(raw))
    with pytest.raises(StateFileError, match="compression"):
        load_state(path)


def test_a_forged_header_is_refused_before_allocating(tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
    path = _npz_with(tmp_path / "forged.npz", {"mass.npy": header.getvalue() + b"\0" * 64,
                                               "position.npy": _npy_bytes(GOOD["position"]),
                                               "velocity.npy": _npy_bytes(GOOD["velocity"])})
    with pytest.raises(StateFileError, match="'mass' claims shape .*corrupt or forged"):
        load_state(path)


def test_a_state_too_large_for_memory_is_refused_with_an_estimate(tmp_path, monkeypatch):
    from nbtoolkit import io as nbio

    save_state(tmp_path / "s.npz", NBodyState.from_arrays(GOOD["mass"], GOOD["position"], GOOD["velocity"]))
    monkeypatch.setattr(nbio, "_available_memory", lambda: 100)
    with pytest.raises(StateFileError, match="need about .* of memory"):
        load_state(tmp_path / "s.npz")


# ----------------------------------------------------------------------------- configuration
def test_non_utf8_toml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"epochs = 3\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_toml(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA device")
def test_an_unusable_device_is_a_config_error():
    with pytest.raises(ConfigError, match="'device'.*not usable"):
        TrainConfig(device="cuda")


def test_e_lower_bound_message_does_not_contradict_itself():
    assert TrainConfig(E_lower=1e-14).E_lower == 1e-14
    with pytest.raises(ConfigError) as info:
        TrainConfig(E_lower=9e-15)
    assert ">= 1e-14; got 9e-15" in str(info.value)


def test_gui_options_are_checked_and_each_problem_named(tmp_path, capsys):
    code, _, err = run_cli(capsys, "gui", "--headless", "--config", str(tmp_path / "missing.toml"),
                           "--checkpoint", str(tmp_path / "missing.pt"), "--preset", "bogus")
    assert code == 2
    assert "--config" in err and "missing.toml" in err
    assert "--checkpoint" in err and "missing.pt" in err
    assert "--preset" in err and "bogus" in err


def test_the_torch_floor_excludes_versions_with_the_weights_only_bypass():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in deps if d.replace(" ", "").startswith("torch>="))
    major, minor = (int(x) for x in floor.split(">=")[1].split(",")[0].strip().split(".")[:2])
    assert (major, minor) >= (2, 6)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    system = make_preset("kepler-batch", num_orbits=2)
    trainer = Trainer(TrainConfig.from_dict({"epochs": 1, "integrator": "rk4", "history_len": 1, **SMALL}), system)
    trainer.fit()
    trainer.save_checkpoint(path)
    return path


def _tampered(source: Path, target: Path, change, *, fix_checksum: bool = True) -> Path:
    data = torch.load(source, weights_only=True)
    change(data)
    if fix_checksum:
        data["checksum"] = {"algorithm": "sha256", "digest": payload_digest(data)}
    torch.save(data, target)
    return target


def test_a_negative_epoch_is_refused(checkpoint, tmp_path):
    bad = _tampered(checkpoint, tmp_path / "neg.pt", lambda d: d.update(epoch=-5))
    with pytest.raises(CheckpointError, match="key 'epoch' must be an integer >= 0"):
        Trainer.from_checkpoint(bad)


def test_a_flipped_bit_in_a_weight_is_detected(checkpoint, tmp_path):
    def flip(data):
        weight = next(v for v in data["predictor_state"].values() if v.is_floating_point() and v.numel())
        bits = weight.view(torch.int64)
        bits.view(-1)[0] ^= 1 << 20

    bad = _tampered(checkpoint, tmp_path / "flip.pt", flip, fix_checksum=False)
    with pytest.raises(CheckpointError, match="checksum"):
        load_predictor(bad)
    with pytest.raises(CheckpointError, match="checksum"):
        Trainer.from_checkpoint(bad)
    assert read_checkpoint(checkpoint)["checksum"]["algorithm"] == "sha256"


@pytest.mark.parametrize("change, key", [
    (lambda d: d.update(config=[1, 2]), "'config'"),
    (lambda d: d["plugins"].pop("predictor"), "'plugins' has no 'predictor'"),
    (lambda d: d.update(totals={"accepted": "many", "retrains": 0}), "'totals.accepted'"),
    (lambda d: d.update(rng_state=torch.zeros(3)), "'rng_state'"),
    (lambda d: d.update(history={"position": torch.zeros(2, 1, 2, 2)}), "'history' has no 'velocity'"),
    (lambda d: d["history"].update(mask=torch.zeros(5, dtype=torch.bool)), "'history' has inconsistent shapes"),
    (lambda d: d["state"].update(mass="heavy"), "'state.mass'"),
    (lambda d: d["predictor_state"].update(extra=3), "'predictor_state.extra'"),
])
def test_malformed_checkpoint_contents_name_the_bad_key(checkpoint, tmp_path, change, key):
    bad = _tampered(checkpoint, tmp_path / "bad.pt", change)
    with pytest.raises(CheckpointError, match=key.replace("(", r"\(")):
        Trainer.from_checkpoint(bad)


def test_a_wrong_length_rng_state_is_a_checkpoint_error(checkpoint, tmp_path):
    bad = _tampered(checkpoint, tmp_path / "rng.pt", lambda d: d.update(rng_state=torch.zeros(7, dtype=torch.uint8)))
    with pytest.raises(CheckpointError, match="rng_state"):
        Trainer.from_checkpoint(bad)


def test_simulate_and_evaluate_fly_a_checkpoint_with_its_integrator(checkpoint, capsys):
    code, out, err = run_cli(capsys, "simulate", "--preset", "kepler", "--checkpoint", str(checkpoint), "--steps", "5")
    assert code == 0 and "warning" not in err
    assert "force evaluations  20" in out  # rk4: 4 per step
    code, out, err = run_cli(capsys, "simulate", "--preset", "kepler", "--checkpoint", str(checkpoint), "--steps", "5",
                             "--integrator", "leapfrog")
    assert code == 0 and "force evaluations  5" in out
    assert "trained with integrator 'rk4'" in err and "'leapfrog'" in err
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(checkpoint), "--orbits", "0.05", "--rules")
    assert code == 0 and "learned" in out and "warning" not in err


# ----------------------------------------------------------------------------- lost work
def test_sigterm_stops_training_and_writes_the_checkpoint(tmp_path):
    model, log = tmp_path / "model.pt", tmp_path / "metrics.jsonl"
    command = [sys.executable, "-m", "nbtoolkit", "train", "--preset", "kepler-batch", "--num-orbits", "2",
               "--epochs", "100000", "--hidden-width", "8", "--hidden-layers", "1", "--steps-per-epoch", "4",
               "--replay-steps", "5", "--threads", "1", "--checkpoint", str(model), "--metrics-log", str(log)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and "EpochEnd" in log.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert "(stopped)" in out
    assert read_checkpoint(model)["epoch"] >= 1


def test_an_unwritable_output_is_reported_before_any_work(tmp_path, capsys, monkeypatch):
    import nbtoolkit.simulate as sim

    monkeypatch.setattr(sim, "iter_steps", lambda *a, **k: pytest.fail("simulated before checking --out"))
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--steps", "3", "--out",
                           str(tmp_path / "no" / "such" / "dir" / "t.npz"))
    assert code == 2 and "--out" in err and "does not exist" in err
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--steps", "3", "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
    system = make_preset("kepler")
    trainer = Trainer(TrainConfig(epochs=1, checkpoint_path=str(tmp_path), **SMALL), system.state)
    with pytest.raises(ConfigError, match="checkpoint_path.*is a directory"):
        trainer.fit()
    assert trainer.total_accepted == 0


def test_atomic_write_removes_leftovers_of_dead_writers_and_syncs_the_directory(tmp_path, monkeypatch):
    import nbtoolkit.atomic as atomic

    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    leftover = tmp_path / f".model.pt.{atomic._host_tag()}.{dead_pid}.abc123.tmp"
    leftover.write_bytes(b"x" * 1000)
    alive = tmp_path / f".model.pt.{atomic._host_tag()}.{os.getppid()}.def456.tmp"  # a live writer: kept
    alive.write_bytes(b"y")
    old_style = tmp_path / ".model.pt.zzz.tmp"
    old_style.write_bytes(b"z")
    os.utime(old_style, (time.time() - 3 * 86400,) * 2)
    synced = []
    monkeypatch.setattr(atomic, "_fsync_directory", lambda folder: synced.append(folder))
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert not leftover.exists() and not old_style.exists() and alive.exists()
    assert synced == [tmp_path]
    assert remove_stale_temporaries(target) == []


# ----------------------------------------------------------------------------- observers and plugins
class _BrokenObserver:
    calls = 0

    @hookimpl
    def nbtoolkit_step_accepted(self, event):
        type(self).calls += 1
        raise ZeroDivisionError("observer bug")


def test_an_observer_that_raises_is_disabled_with_one_warning(host):
    name = host.register_plugin(_BrokenObserver(), name="broken-observer")
    try:
        system = make_preset("kepler-batch", num_orbits=2)
        trainer = Trainer(TrainConfig(epochs=2, **SMALL), system.state, host=host)
        with pytest.warns(RuntimeWarning, match="observer plugin 'broken-observer'.*ZeroDivisionError") as record:
            result = trainer.fit()
        assert result.epochs_completed == 2 and not result.stopped
        assert _BrokenObserver.calls == 1
        assert sum("broken-observer" in str(w.message) for w in record) == 1
    finally:
        host.unregister_plugin(name)
    assert name not in host.disabled_observers


class _BadDtPlugin:
    class BadDt(torch.nn.Module):
        history_len = 0

        def forward(self, state, history=None):
            return -torch.ones(state.batch_size, dtype=state.dtype)

    @hookimpl
    def nbtoolkit_register_dt_predictors(self, register):
        register("bad-dt", self.BadDt)


def test_api_errors_about_a_predictor_name_its_plugin(host):
    name = host.register_plugin(_BadDtPlugin(), name="bad-dt-plugin", source="nbt-bad 1.0")
    try:
        predictor = host.predictors.create("bad-dt")
        with pytest.raises(InvalidTimestepError, match=r"dt predictor 'bad-dt' \(plugin 'bad-dt-plugin' from nbt-bad 1.0\)"):
            simulate(make_preset("kepler").state, host.integrators.create("leapfrog"), predictor, steps=2)
    finally:
        host.unregister_plugin(name)


def test_predictor_and_integrator_options(capsys):
    code, out, _ = run_cli(capsys, "simulate", "--preset", "kepler", "--predictor", "aarseth", "--predictor-option",
                           "eta=0.01", "--steps", "3")
    assert code == 0 and "steps              3" in out
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--integrator-option", "order=4", "--steps", "3")
    assert code == 2 and "integrator 'leapfrog'" in err and "does not take option(s) order" in err
    code, _, err = run_cli(capsys, "evaluate", "--rules", "mlp", "--orbits", "1")
    assert code == 2 and "takes neither" in err and "'mlp'" in err
    code, _, err = run_cli(capsys, "simulate", "--preset", "kepler", "--predictor-option", "eta", "--steps", "3")
    assert code == 2 and "KEY=VALUE" in err


def test_block_list_typos_warn_with_known_names_and_blocked_entries_say_so(monkeypatch):
    monkeypatch.setenv("NBTOOLKIT_BLOCK_PLUGINS", "plugins.classical_predictors,plugins.observrs")
    with pytest.warns(RuntimeWarning, match="NBTOOLKIT_BLOCK_PLUGINS names 'plugins.observrs'.*did you mean "
                                            "'plugins.observers'.*known plugins: .*plugins.integrators"):
        host = PluginHost(load_entry_points=False)
    with pytest.raises(Exception, match="plugins.classical_predictors.*blocked by NBTOOLKIT_BLOCK_PLUGINS"):
        host.predictors.get("freefall")


def test_load_failures_are_warned_once_and_point_at_the_plugin(tmp_path, monkeypatch):
    import warnings

    (tmp_path / "nbt_broken_reg.py").write_text(
        "from nbtoolkit import hookimpl\n@hookimpl\n"
        "def nbtoolkit_register_integrators(register):\n    raise ValueError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = PluginHost(("plugins.integrators", "nbt_broken_reg"), load_entry_points=False)
        host.refresh()
        host.refresh()
    mine = [w for w in caught if "nbt_broken_reg" in str(w.message)]
    assert len(mine) == 1
    assert mine[0].filename.endswith("nbt_broken_reg.py")
    sys.modules.pop("nbt_broken_reg", None)


def test_plugins_json(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    data = json.loads(out)
    assert code == 0
    assert {"kind": "integrator", "name": "leapfrog", "plugin": "plugins.integrators",
            "source": "module plugins.integrators", "options": []} in data["entries"]
    assert any(p["name"] == "plugins.observers:metrics_log" and p["source"] == "module plugins.observers"
               and "nbtoolkit_epoch_end" in p["hooks"] for p in data["plugins"])
    assert data["failures"] == [] or all("plugin" in f for f in data["failures"])


def test_trace_names_the_plugins_that_answer(capsys):
    host = PluginHost(load_entry_points=False, trace=True)
    host.hook.nbtoolkit_register_integrators(register=lambda *a: None)
    err = capsys.readouterr().err
    assert "nbtoolkit_register_integrators answered by 'plugins.integrators'" in err


def test_a_preset_too_large_for_memory_is_refused_before_stepping(capsys, monkeypatch):
    import nbtoolkit.validate as validate

    monkeypatch.setattr(validate, "available_memory", lambda: 2**27)
    code, _, err = run_cli(capsys, "simulate", "--preset", "plummer", "--n", "3000", "--steps", "1")
    assert code == 2 and "need about" in err and "of memory" in err and "Traceback" not in err


def test_allocation_failures_become_one_paragraph(capsys, monkeypatch):
    import nbtoolkit.cli as cli

    def explode(args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 96000000000000 bytes")

    monkeypatch.setattr(cli, "cmd_plugins", explode)
    parser_func = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_func(), explode))
    code, _, err = run_cli(capsys, "plugins")
    assert code == 2 and "out of memory" in err


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


class _OptionIntegratorPlugin:
    @staticmethod
    def make(substeps: int = 1):
        from plugins.integrators import Leapfrog

        integrator = Leapfrog()
        integrator.substeps = substeps
        return integrator

    @hookimpl
    def nbtoolkit_register_integrators(self, register):
        register("opt-leapfrog", self.make)


def test_integrator_options_from_toml_reach_training_the_checkpoint_and_simulate(host, tmp_path, capsys):
    name = host.register_plugin(_OptionIntegratorPlugin(), name="opt-plugin")
    try:
        config = tmp_path / "run.toml"
        config.write_text('integrator = "opt-leapfrog"\n[integrator_options]\nsubsteps = 3\n')
        cfg = TrainConfig.from_toml(config)
        assert cfg.integrator_options == {"substeps": 3}
        system = make_preset("kepler")
        trainer = Trainer(cfg.replace(epochs=1, **SMALL), system.state, host=host)
        assert trainer.integrator.substeps == 3
        path = trainer.save_checkpoint(tmp_path / "m.pt")
        import argparse

        from nbtoolkit.cli import _integrator_and_checkpoint

        args = argparse.Namespace(integrator=None, integrator_option=None, checkpoint=path, predictor_option=None,
                                  command="simulate")
        integrator, predictor = _integrator_and_checkpoint(host, args)
        assert integrator.substeps == 3 and predictor is not None
        args.integrator_option = [("substeps", 5)]
        assert _integrator_and_checkpoint(host, args)[0].substeps == 5
    finally:
        host.unregister_plugin(name)



def test_new_plugin_scaffolds_a_package_whose_tests_pass(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "new-plugin", "scaffold-probe", "--dir", str(tmp_path))
    folder = tmp_path / "nbtoolkit-scaffold-probe"
    assert code == 0 and str(folder) in out
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["nbtoolkit"] == {"scaffold-probe": "nbtoolkit_scaffold_probe"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    code, _, err = run_cli(capsys, "new-plugin", "scaffold-probe", "--dir", str(tmp_path))
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(capsys, "new-plugin", "Bad_Name", "--dir", str(tmp_path))
    assert code == 2 and "plugin name" in err
    code, _, err = run_cli(capsys, "new-plugin", "leapfrog", "--dir", str(tmp_path))
    assert code == 2 and "already taken" in err and not (tmp_path / "nbtoolkit-leapfrog").exists()


class _DuplicateSamplerPlugin:
    @staticmethod
    def make():
        return lambda buffer, k, generator: torch.zeros(k, dtype=torch.long)

    @hookimpl
    def nbtoolkit_register_replay_samplers(self, register):
        register("dup-sampler", self.make)


def test_api_errors_about_a_sampler_name_its_plugin(host):
    from nbtoolkit.errors import PluginError

    name = host.register_plugin(_DuplicateSamplerPlugin(), name="dup-plugin", source="nbt-dup 2.0")
    try:
        system = make_preset("kepler-batch", num_orbits=2)
        trainer = Trainer(TrainConfig(epochs=1, sampler="dup-sampler", **SMALL), system.state, host=host)
        with pytest.raises(PluginError, match=r"replay sampler 'dup-sampler' \(plugin 'dup-plugin' from nbt-dup 2.0\) "
                                              "returned duplicate indices"):
            trainer.fit()
    finally:
        host.unregister_plugin(name)


def test_non_finite_plugin_options_are_refused():
    with pytest.raises(ConfigError, match="'predictor_options': option 'init_factor' must be finite"):
        TrainConfig(predictor_options={"init_factor": math.nan})
    with pytest.raises(ConfigError, match="'integrator_options': option 'x' must be finite"):
        TrainConfig(integrator_options={"x": math.inf})


def test_long_simulations_report_progress_without_a_terminal(capsys):
    from nbtoolkit.cli import _ProgressPrinter

    now = [0.0]
    progress = _ProgressPrinter(True, every=10.0, clock=lambda: now[0])
    progress(1, 0.01)
    now[0] = 11.0
    progress(500, 0.25)
    progress(501, 0.26)  # not again until another 10 s have passed
    progress.close()
    err = capsys.readouterr().err
    assert err.count("simulating:") == 1 and "25.0% done, step 500" in err
    quiet = _ProgressPrinter(False, every=0.0)
    quiet(1, 0.5)
    assert "simulating:" not in capsys.readouterr().err


def test_evaluate_t_end_is_validated(capsys):
    code, _, err = run_cli(capsys, "evaluate", "--preset", "pythagorean", "--t-end", "nan")
    assert code == 2 and "argument --t-end:" in err


def test_model_files_carry_a_checksum_and_a_validated_layout(checkpoint, tmp_path):
    from nbtoolkit.training.checkpoint import export_model, read_model

    model = export_model(checkpoint, tmp_path / "model.nbm")
    assert read_model(model)["checksum"]["algorithm"] == "sha256"
    load_predictor(model)

    def flip(data):
        weight = next(v for v in data["predictor_state"].values() if v.is_floating_point() and v.numel())
        weight.view(torch.int64).view(-1)[0] ^= 1 << 30

    with pytest.raises(CheckpointError, match="model .*checksum"):
        load_predictor(_tampered(model, tmp_path / "flipped.nbm", flip, fix_checksum=False))
    with pytest.raises(CheckpointError, match="key 'predictor_options' must be a table"):
        load_predictor(_tampered(model, tmp_path / "bad.nbm", lambda d: d.update(predictor_options=[1])))


def test_an_unwritable_export_model_path_is_reported_before_training(tmp_path, capsys):
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "train", "--preset", "kepler", "--epochs", "1000", "--checkpoint",
                           str(tmp_path / "m.pt"), "--export-model", str(tmp_path / "missing" / "model.nbm"))
    assert code == 2 and "--export-model" in err and "does not exist" in err
    assert not (tmp_path / "m.pt").exists() and time.perf_counter() - start < 60
