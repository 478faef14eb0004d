"""The command line, run as a user runs it: the documented commands, their outputs and their errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from systems import random_cluster

from nbtoolkit.cli import main
from nbtoolkit.io import save_state


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_is_installed_and_lists_plugins():
    script = Path(sys.executable).with_name("nbtoolkit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "nbtoolkit"]
    proc = subprocess.run([*command, "plugins"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert ["integrator", "leapfrog", "plugins.integrators", "module", "plugins.integrators"] in rows
    assert any(r[:3] == ["dt", "predictor", "freefall"] for r in rows)


def test_plugins_verbose_shows_hooks(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--verbose")
    assert code == 0
    assert "plugins.integrators  [module plugins.integrators]" in out
    assert "hooks: nbtoolkit_register_integrators" in out


def test_figure_eight_contract_command(tmp_path, capsys):
    out_file = tmp_path / "traj.npz"
    code, out, _ = run_cli(capsys, "simulate", "--preset", "figure-eight", "--integrator", "yoshida4", "--predictor",
                           "constant", "--dt", "0.001", "--steps", "6326", "--out", str(out_file))
    assert code == 0
    data = np.load(out_file)
    assert data["position"].shape == (6327, 1, 3, 2)
    assert {"time", "position", "velocity", "mass", "dt", "rel_dE", "energy"} <= set(data.files)
    assert data["time"][-1, 0] == pytest.approx(6.326)
    # after one period (6.3259) the figure-eight is back where it started
    assert np.abs(data["position"][-1] - data["position"][0]).max() < 2e-3
    assert "steps              6326" in out and "force evaluations  18978" in out


def test_kepler_guard_contract_command(tmp_path, capsys):
    out_file = tmp_path / "traj.npz"
    code, out, _ = run_cli(capsys, "simulate", "--preset", "kepler", "--eccentricity", "0.9", "--integrator", "leapfrog",
                           "--predictor", "aarseth", "--eta", "0.02", "--orbits", "10", "--guard", "--out", str(out_file))
    assert code == 0
    data = np.load(out_file)
    assert data["rel_dE"].max() <= 2e-4
    assert "guarded steps" in out and "final |dE/E|" in out
    period = 2 * np.pi * np.sqrt(1 / 2.0)
    assert data["time"][-1, 0] == pytest.approx(10 * period, rel=1e-10)


def test_state_file_contract_command(tmp_path, capsys):
    state_file, out_file = tmp_path / "my_state.npz", tmp_path / "traj.npz"
    save_state(state_file, random_cluster(1, 5, softening=0.05))
    code, out, _ = run_cli(capsys, "simulate", "--state", str(state_file), "--integrator", "rk4", "--predictor",
                           "freefall", "--eta", "0.05", "--t-end", "2.0", "--out", str(out_file))
    assert code == 0
    assert np.load(out_file)["time"][-1, 0] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "kepler", "--integrator", "nope", "--steps", "3"], "unknown integrator 'nope'; known: "),
        (["--preset", "kepler", "--predictor", "nope", "--steps", "3"], "unknown dt predictor 'nope'; known: "),
        (["--preset", "kepler", "--eccentricity", "1.5", "--steps", "3"], "eccentricity"),
        (["--preset", "kepler", "--predictor", "constant", "--eta", "0.1", "--steps", "3"], "does not take option(s) eta"),
        (["--preset", "figure-eight", "--eccentricity", "0.3", "--steps", "3"], "does not take --eccentricity"),
        (["--preset", "pythagorean", "--orbits", "2"], "no known period"),
    ],
)
def test_bad_input_gives_one_paragraph_and_status_2(capsys, argv, message):
    code, out, err = run_cli(capsys, "simulate", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.startswith("nbtoolkit simulate: error:")


def test_malformed_and_non_finite_state_files_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    code, _, err = run_cli(capsys, "simulate", "--state", str(bad), "--steps", "2")
    assert code == 2 and "bad.npz" in err
    nan_file = tmp_path / "nan.npz"
    np.savez(nan_file, mass=[1.0, 1.0], position=[[0.0, 0.0], [np.nan, 0.0]], velocity=[[0.0, 0.0], [0.0, 0.0]])
    code, _, err = run_cli(capsys, "simulate", "--state", str(nan_file), "--steps", "2")
    assert code == 2 and "'position' has a non-finite value" in err and "nan.npz" in err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="unknown integrator"):
        main(["--debug", "simulate", "--preset", "kepler", "--integrator", "nope", "--steps", "3"])


def test_gui_without_a_display_runs_the_main_job_headless(capsys, monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    code, out, err = run_cli(capsys, "gui", "--epochs", "1")
    assert code == 0
    assert "no display found" in err
    learned = [line.split() for line in out.splitlines() if line.startswith("just trained (mlp)")]
    pretrained = [line.split() for line in out.splitlines() if line.startswith("pretrained 'learned'")]
    tuned = [line.split() for line in out.splitlines() if line.startswith("freefall (eta=")]
    assert len(learned) == 1 and len(tuned) == 1 and len(pretrained) == 1
    assert int(learned[0][3]) > 0  # steps of the held-out orbit with the learned dt
    assert float(pretrained[0][-3]) >= 99.0  # the shipped model passes the gate on a system it never saw
    assert tuned[0][-3] == "100.00"  # the tuned rule passes the gate on every step
