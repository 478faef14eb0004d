"""``nbtoolkit calibrate``: the shipped weights calibrated again for another integrator or gate."""

from __future__ import annotations

import math

import pytest
import torch

from nbtoolkit.cli import main
from nbtoolkit.errors import ConfigError
from nbtoolkit.physics import relative_energy_error, state_energy
from nbtoolkit.training import checkpoint
from nbtoolkit.training.checkpoint import read_model
from nbtoolkit.training.recalibrate import model_source, recalibrate_model
from nbtoolkit.training.trainset import load_training_set, pad_systems
from plugins.learned_predictor import MODEL_FILE

SMALL_SET = """
name = "small"
[[systems]]
family = "kepler"
count = 3
eccentricity = [0.2, 0.45]
mass_ratio = [0.3, 1.0]
"""


@pytest.fixture()
def small_set(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SET, encoding="utf-8")
    return path


def test_recalibration_follows_the_threshold_and_integrator_and_the_file_records_them(host, small_set, tmp_path):
    source = model_source("learned", host)
    base = recalibrate_model(source, tmp_path / "lf.pt", training_set=str(small_set), steps=48, host=host)
    strict = recalibrate_model(source, tmp_path / "strict.pt", threshold=1e-4, training_set=str(small_set), steps=48,
                               host=host)
    yoshida = recalibrate_model(source, tmp_path / "y4.pt", integrator="yoshida4", training_set=str(small_set),
                                steps=48, host=host)
    # binaries with e < 0.5 all fall in class 1 (two bodies, e < 0.5, the pair holds the energy). Leapfrog's
    # step error grows as dt^3: half the threshold takes about 2^(-1/3) = 0.79 of the dt
    assert 0.7 < strict.safety[1] / base.safety[1] < 0.88
    steered = host.predictors.create("learned", model=str(tmp_path / "strict.pt"))  # to the gate it was calibrated for
    assert (steered.target, steered.ceiling) == pytest.approx((0.5e-4, 0.85e-4))
    # what the yoshida4 factors promise: its own validation systems pass with yoshida4 (leapfrog's factor need not)
    predictor = host.predictors.create("learned", model=str(tmp_path / "y4.pt"), feedback=False)
    state = pad_systems(load_training_set(str(small_set)).validation_draws(0))
    integrator = host.integrators.create("yoshida4")
    passed = total = 0
    with torch.no_grad():
        for _ in range(48):
            new = integrator.step(state, predictor(state))
            rel = (relative_energy_error(state_energy(state), state_energy(new)) <= 2e-4)
            passed, total, state = passed + int(rel.sum()), total + rel.numel(), new
    assert passed / total >= 0.995
    data = read_model(tmp_path / "y4.pt")
    assert data["calibration"]["integrator"] == "yoshida4" and data["calibration"]["threshold"] == 2e-4
    assert data["info"]["calibrated_from"] == str(source)
    predictor = host.predictors.create("learned", model=str(tmp_path / "y4.pt"), feedback=False)
    assert [round(math.log(f), 9) for f in predictor.safety] == [round(math.log(f), 9) for f in yoshida.safety]
    original = host.predictors.create("learned", feedback=False)
    weights = {k: v for k, v in original.state_dict().items() if k != "log_safety"}
    assert all(torch.equal(v, predictor.state_dict()[k]) for k, v in weights.items())


def test_calibrate_command_writes_a_model_that_simulate_flies(small_set, tmp_path, capsys, monkeypatch):
    out = tmp_path / "recal.pt"
    read = []
    monkeypatch.setattr(checkpoint, "read_model", lambda path: read.append(path) or read_model(path))
    assert main(["calibrate", "--model", "learned", "--out", str(out), "--training-set", str(small_set),
                 "--steps", "16"]) == 0
    assert "safety factors" in capsys.readouterr().out
    assert read == [MODEL_FILE]  # the shipped model is read once
    traj = tmp_path / "t.npz"
    assert main(["simulate", "--preset", "kepler", "--eccentricity", "0.3", "--orbits", "1", "--predictor", "learned",
                 "--predictor-option", f"model={out}", "--out", str(traj)]) == 0
    assert traj.exists()


def test_calibrate_refuses_what_is_not_a_model(host, tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a registered dt predictor"):
        model_source(str(tmp_path / "missing.pt"), host)
    with pytest.raises(ConfigError, match="'freefall' is not loaded from a model file"):
        model_source("freefall", host)
    assert main(["calibrate", "--model", "freefall", "--out", str(tmp_path / "x.pt")]) != 0
    assert not (tmp_path / "x.pt").exists()
