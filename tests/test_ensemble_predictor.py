"""The ``mlp-ensemble`` predictor and ``nbtoolkit calibrate --model a.pt --model b.pt``: several mlp models of one
recipe combined into one, calibrated as a whole."""

from __future__ import annotations

import math

import pytest
import torch

from nbtoolkit.cli import main
from nbtoolkit.errors import ConfigError
from nbtoolkit.training.checkpoint import plugin_info, read_model, write_model
from nbtoolkit.training.ensemble import combine_models
from nbtoolkit.training.recalibrate import recalibrate_model
from nbtoolkit.training.trainset import load_training_set, pad_systems
from plugins.learned_predictor import MODEL_FILE

MIXED_SET = """
name = "mixed"
[[systems]]
family = "kepler"
count = 3
eccentricity = [0.2, 0.9]
[[systems]]
family = "triple"
count = 2
[[systems]]
family = "plummer"
count = 2
n = [5, 9]
"""


@pytest.fixture()
def mixed_set(tmp_path):
    path = tmp_path / "mixed.toml"
    path.write_text(MIXED_SET, encoding="utf-8")
    return path


def write_member(host, path, seed: int, **options) -> None:
    """A model file of an mlp predictor with weights drawn from ``seed`` (made bolder than an untrained
    network's, so members differ) and a training seed ``seed`` in its configuration."""
    options = {"timescale": "crossing", **options}
    predictor = host.predictors.create("mlp", seed=seed, **options)
    with torch.no_grad():
        predictor.head[-1].weight.mul_(100.0)
        predictor.log_safety.fill_(math.log(0.5))  # a member's own factors are dropped by the ensemble
    data = read_model(MODEL_FILE)
    data["config"] = {**data["config"], "seed": seed, "predictor_options": options}
    data["plugins"] = {**data["plugins"], "predictor": plugin_info(host, "predictors", "mlp")}
    data["predictor_options"] = dict(predictor.options)
    write_model(data, path, predictor_state={k: v.detach().clone() for k, v in predictor.state_dict().items()})


@pytest.fixture()
def members(host, tmp_path):
    paths = [tmp_path / f"member{seed}.pt" for seed in (0, 3)]
    for seed, path in zip((0, 3), paths):
        write_member(host, path, seed)
    return paths


def test_the_ensemble_dt_is_the_geometric_mean_of_its_members_dt_before_their_factors(host, members, mixed_set):
    ensemble, data = combine_models(members, host)
    state = pad_systems(load_training_set(str(mixed_set)).draw(0))  # 2, 3 and 5-9 bodies in one padded batch
    singles = [host.predictors.create("learned", model=str(path), feedback=False) for path in members]
    with torch.no_grad():
        raw = [single.log_dt(state) for single in singles]
        assert not torch.allclose(raw[0], raw[1], rtol=1e-3)  # the members disagree
        assert torch.allclose(ensemble.log_dt(state), 0.5 * (raw[0] + raw[1]), rtol=1e-12, atol=0)
        ensemble.log_safety.copy_(torch.linspace(-0.3, 0.3, ensemble.log_safety.numel(), dtype=torch.float64))
        dt, classes = ensemble.predict_with_class(state)
    assert torch.equal(classes, singles[0].safety_index(state))
    assert torch.allclose(dt, (0.5 * (raw[0] + raw[1]) + ensemble.log_safety[classes]).exp(), rtol=1e-12, atol=0)
    assert data["predictor_options"]["size"] == 2 and data["plugins"]["predictor"]["name"] == "mlp-ensemble"
    assert [m["seed"] for m in data["info"]["members"]] == [0, 3]
    cautious, data = combine_models(members, host, spread=0.7)
    with torch.no_grad():  # the std of two values is half their difference
        expected = 0.5 * (raw[0] + raw[1]) - 0.7 * 0.5 * (raw[0] - raw[1]).abs()
        assert torch.allclose(cautious.log_dt(state), expected, rtol=1e-12, atol=0)
    assert data["predictor_options"]["spread"] == 0.7


def test_the_ensemble_dt_scales_with_the_units_like_a_timescale(host, members, mixed_set):
    ensemble, _ = combine_models(members, host)
    state = pad_systems(load_training_set(str(mixed_set)).draw(1))
    length, mass = 7.0, 0.01
    scaled = state.replace(mass=state.mass * mass, position=state.position * length,
                           velocity=state.velocity * math.sqrt(mass / length), softening=state.softening * length)
    with torch.no_grad():
        assert torch.allclose(ensemble(scaled), ensemble(state) * math.sqrt(length ** 3 / mass), rtol=1e-9)


def test_members_of_different_recipes_are_refused_and_named(host, members, tmp_path):
    other = tmp_path / "freefall.pt"
    write_member(host, other, 5, timescale="freefall")
    with pytest.raises(ConfigError, match=r"timescale = 'crossing' in '.*member0.pt', 'freefall' in '.*freefall.pt'"):
        combine_models([members[0], other], host)
    with pytest.raises(ConfigError, match="at least two"):
        combine_models(members[:1], host)
    assert main(["calibrate", "--model", str(members[0]), "--spread", "1", "--out", str(tmp_path / "x.pt")]) == 2
    strict = tmp_path / "strict.pt"
    data = read_model(members[1])
    write_model({**data, "config": {**data["config"], "energy_threshold": 1e-5}}, strict)
    with pytest.raises(ConfigError, match="energy_threshold"):
        combine_models([members[0], strict], host)


def test_calibrate_with_several_models_writes_an_ensemble_that_loads_and_flies(host, members, mixed_set, tmp_path,
                                                                               capsys):
    out = tmp_path / "ensemble.pt"
    args = ["calibrate", "--out", str(out), "--training-set", str(mixed_set), "--steps", "16"]
    assert main(args + [arg for path in members for arg in ("--model", str(path))]) == 0
    assert "safety factors" in capsys.readouterr().out
    data = read_model(out)
    assert data["plugins"]["predictor"]["name"] == "mlp-ensemble"
    assert data["calibration"]["seed"] == 3  # validation draws 4 and 5: neither member trained on them
    loaded = host.predictors.create("learned", model=str(out), feedback=False)
    assert type(loaded).__name__ == "MLPEnsembleDt" and not loaded.training
    again = recalibrate_model(members, tmp_path / "again.pt", training_set=str(mixed_set), steps=16, host=host)
    assert loaded.safety == pytest.approx(again.safety, rel=1e-12)
    assert any(f != 1.0 for f in loaded.safety)
    traj = tmp_path / "t.npz"
    assert main(["simulate", "--preset", "kepler", "--eccentricity", "0.5", "--orbits", "1", "--predictor", "learned",
                 "--predictor-option", f"model={out}", "--out", str(traj)]) == 0
    assert traj.exists()
