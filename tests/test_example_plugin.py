"""The example third-party package ``examples/nbtoolkit-pefrl``, installed with pip, used as a user would:
listed by ``nbtoolkit plugins``, run by ``nbtoolkit simulate``, used by a training run and offered by the viewer.

Skipped when the distribution is not installed (``pip install ./examples/nbtoolkit-pefrl``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbtoolkit import hookimpl
from nbtoolkit.cli import main
from nbtoolkit.presets import make_preset

try:
    DIST_VERSION = importlib.metadata.version("nbtoolkit-pefrl")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the example plugin distribution nbtoolkit-pefrl is not installed "
                "(pip install ./examples/nbtoolkit-pefrl)", allow_module_level=True)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # set before pytest-qt creates the application


def nbtoolkit_command() -> list[str]:
    script = Path(sys.executable).with_name("nbtoolkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nbtoolkit"]


def test_installed_version_is_the_example_version():
    assert DIST_VERSION == "0.1.0"


def test_nbtoolkit_plugins_lists_the_entries_with_distribution_and_version():
    proc = subprocess.run([*nbtoolkit_command(), "plugins", "--verbose"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table, details = proc.stdout.split("\nplugins:")
    rows = [line.split() for line in table.splitlines()[1:]]
    assert ["integrator", "pefrl", "pefrl", "nbtoolkit-pefrl", "0.1.0"] in rows
    assert ["dt", "predictor", "flyby", "pefrl", "nbtoolkit-pefrl", "0.1.0"] in rows
    assert ("  pefrl  [nbtoolkit-pefrl 0.1.0]\n"
            "    hooks: nbtoolkit_register_dt_predictors, nbtoolkit_register_integrators") in details
    assert "failed to load" not in proc.stdout + proc.stderr


def max_energy_error(path: Path) -> float:
    energy = np.load(path)["energy"][:, 0]
    return float(np.abs(energy - energy[0]).max() / abs(energy[0]))


def test_simulate_with_pefrl_conserves_energy_as_a_fourth_order_scheme(tmp_path, capsys):
    """The energy error of a symplectic scheme oscillates with an amplitude ~ dt^order: halving dt
    shrinks it 16-fold. (At exactly one period it comes back to round-off, so the maximum is used.)"""
    period = make_preset("kepler", eccentricity=0.5).period.item()
    amplitudes = []
    for steps in (100, 200):
        out = tmp_path / f"pefrl{steps}.npz"
        code = main(["simulate", "--preset", "kepler", "--eccentricity", "0.5", "--integrator", "pefrl", "--predictor",
                     "constant", "--dt", repr(period / steps), "--orbits", "1", "--out", str(out), "--quiet"])
        printed = capsys.readouterr().out
        assert code == 0
        assert f"steps              {steps}\n" in printed and f"force evaluations  {4 * steps}\n" in printed
        amplitudes.append(max_energy_error(out))
    assert amplitudes[1] < 1e-6
    assert math.log2(amplitudes[0] / amplitudes[1]) == pytest.approx(4.0, abs=0.15)


def test_simulate_with_both_plugin_entries_together(tmp_path, capsys):
    """pefrl driven by the plugin's own flyby dt through an e = 0.9 pericentre passage."""
    out = tmp_path / "flyby.npz"
    code = main(["simulate", "--preset", "kepler", "--eccentricity", "0.9", "--integrator", "pefrl", "--predictor",
                 "flyby", "--eta", "0.05", "--orbits", "1", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = np.load(out)
    assert data["time"][-1, 0] == pytest.approx(make_preset("kepler", eccentricity=0.9).period.item(), rel=1e-12)
    assert data["dt"].max() / data["dt"].min() > 10  # the rule shrinks dt at pericentre
    assert max_energy_error(out) < 1e-6


@pytest.mark.skipif(importlib.util.find_spec("nbtoolkit.training") is None, reason="nbtoolkit.training is not available")
def test_a_short_training_run_uses_the_plugin_integrator(host):
    from nbtoolkit_pefrl import PEFRL

    from nbtoolkit.training import TrainConfig, Trainer

    accepted: list[float] = []

    class Recorder:
        @hookimpl
        def nbtoolkit_step_accepted(self, event):
            accepted.extend(event.rel_dE.tolist())

    system = make_preset("kepler-batch", num_orbits=2, e_min=0.3, e_max=0.5, seed=0)
    config = TrainConfig(integrator="pefrl", epochs=1, steps_per_epoch=4, replay_steps=5, replay_batch_size=8,
                         predictor_options={"hidden_width": 8}, seed=0)
    name = host.register_plugin(Recorder(), name="pefrl-training-recorder")
    try:
        trainer = Trainer(config, system.state, host=host)
        result = trainer.fit()
    finally:
        host.unregister_plugin(name)
    assert isinstance(trainer.integrator, PEFRL)
    assert result.epochs_completed == 1 and not result.stopped
    assert len(accepted) == 2 * 4 and max(accepted) <= config.energy_threshold
    assert len(trainer.buffer) == 8


def test_the_viewer_offers_the_plugin_entries(qtbot, host):
    """The control panel's drop-downs come from the registries: choosing pefrl needs no viewer change."""
    pytest.importorskip("PyQt6")
    pytest.importorskip("pyqtgraph")
    from gui.controls import ControlPanel

    panel = ControlPanel(host)
    qtbot.addWidget(panel)
    integrators = [panel.integrator_combo.itemText(i) for i in range(panel.integrator_combo.count())]
    references = [panel.reference_combo.itemText(i) for i in range(panel.reference_combo.count())]
    assert "pefrl" in integrators and "flyby" in references
    panel.integrator_combo.setCurrentText("pefrl")
    assert panel.train_config().integrator == "pefrl"
