"""`nbtoolkit train` on training sets, model files, and `nbtoolkit evaluate` on systems without a period."""

from __future__ import annotations

import json

import pytest
import torch

from nbtoolkit.cli import main
from nbtoolkit.training import load_predictor
from nbtoolkit.training.checkpoint import MODEL_FORMAT, read_checkpoint

TINY_SET = """
name = "tiny"
[[systems]]
family = "kepler"
count = 3
eccentricity = [0.0, 0.5]

[[systems]]
family = "plummer"
count = 1
n = 5

[train]
steps_per_epoch = 3
replay_steps = 2
replay_batch_size = 8
hidden_width = 8
calibrate_steps = 8
"""


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_on_a_training_set_file_calibrates_and_exports_a_model_file(tmp_path, capsys):
    tset = tmp_path / "tiny.toml"
    tset.write_text(TINY_SET)
    ckpt, model = tmp_path / "c.pt", tmp_path / "m.pt"
    code, out, err = run_cli(capsys, "train", "--training-set", str(tset), "--epochs", "2", "--seed", "4",
                             "--checkpoint", str(ckpt), "--export-model", str(model))
    assert code == 0, err
    assert "training set 'tiny': 4 systems (3 kepler, 1 plummer)" in err and "seeds 5 and 6" in err
    assert "safety factors" in out and "model file" in out
    data = read_checkpoint(ckpt)
    assert data["config"]["steps_per_epoch"] == 3  # the [train] table
    assert data["config"]["predictor_options"]["hidden_width"] == 8
    assert tuple(data["state"]["mass"].shape) == (4, 5)  # padded to the largest system
    saved = torch.load(model, weights_only=True)
    assert saved["format"] == MODEL_FORMAT and "buffer" not in saved
    assert model.stat().st_size < ckpt.stat().st_size
    a, b = load_predictor(ckpt), load_predictor(model)
    assert a.safety == b.safety == pytest.approx(data["calibration"]["safety"]) and a.safety[0] != 1.0
    state = torch.load(ckpt, weights_only=True)["initial_state"]
    from nbtoolkit import NBodyState

    one = NBodyState(state["mass"][:1, :2], state["position"][:1, :2], state["velocity"][:1, :2], state["time"][:1])
    assert torch.equal(a(one), b(one))


def test_flags_override_the_training_set_settings_and_systems_exclude_a_preset(tmp_path, capsys):
    tset = tmp_path / "tiny.toml"
    tset.write_text(TINY_SET)
    ckpt = tmp_path / "c.pt"
    code, _, err = run_cli(capsys, "train", "--training-set", str(tset), "--epochs", "1", "--steps-per-epoch", "2",
                           "--calibrate-pass-rate", "0", "--checkpoint", str(ckpt))
    assert code == 0, err
    assert read_checkpoint(ckpt)["config"]["steps_per_epoch"] == 2
    code, _, err = run_cli(capsys, "train", "--training-set", str(tset), "--preset", "kepler", "--epochs", "1")
    assert code == 2 and "not both" in err


def test_train_reads_systems_tables_from_its_config_file(tmp_path, capsys):
    config = tmp_path / "run.toml"
    # keys after the last [[systems]] table belong to it; put the run keys at the top instead
    config.write_text("epochs = 1\ncalibrate_pass_rate = 0\nsteps_per_epoch = 2\nreplay_steps = 2\nhidden_width = 8\n"
                      "[[systems]]\nfamily = \"figure-eight\"\ncount = 2\n")
    ckpt = tmp_path / "c.pt"
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--checkpoint", str(ckpt))
    assert code == 0, err
    assert tuple(read_checkpoint(ckpt)["state"]["mass"].shape) == (2, 3)


def test_bad_training_set_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[systems]]\nfamily = "kepler"\nmass_ratio = [1.0, 0.1]\n')
    code, _, err = run_cli(capsys, "train", "--training-set", str(bad), "--epochs", "1")
    assert code == 2 and "mass_ratio" in err and "low > high" in err
    code, _, err = run_cli(capsys, "train", "--training-set", "nonsense", "--epochs", "1")
    assert code == 2 and "unknown training set 'nonsense'" in err and "general" in err


def test_evaluate_runs_systems_without_a_period_to_t_end_and_prints_json(capsys):
    code, out, err = run_cli(capsys, "evaluate", "--preset", "pythagorean", "--t-end", "3", "--rules", "freefall",
                             "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["label"].startswith("system 0: freefall")
    assert rows[0]["steps"] > 10 and rows[0]["pass_fraction"] == 1.0 and rows[0]["max_step_rel_dE"] <= 2e-4
    code, _, err = run_cli(capsys, "evaluate", "--preset", "pythagorean", "--rules", "freefall")
    assert code == 2 and "--t-end" in err


def test_evaluate_takes_registered_predictors_by_name(capsys):
    code, out, err = run_cli(capsys, "evaluate", "--preset", "kepler", "--eccentricity", "0.3", "--orbits", "1",
                             "--rules", "--predictor", "freefall", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["label"] for r in rows] == ["system 0: freefall"]
