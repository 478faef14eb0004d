"""The shipped pretrained model: it loads as the `learned` predictor and flies systems right away (never retrained here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbtoolkit import initial_conditions, physics
from nbtoolkit.cli import main
from nbtoolkit.evaluate import evaluate_predictor
from nbtoolkit.io import save_state
from nbtoolkit.presets import make_preset
from nbtoolkit.simulate import simulate
from nbtoolkit.state import NBodyState
from nbtoolkit.training.checkpoint import MODEL_FORMAT, payload_digest
from plugins.feedback import FeedbackDt
from plugins.learned_predictor import FEEDBACK_CEILING, FEEDBACK_TARGET, MODEL_FILE, model_options


def test_the_shipped_model_file_is_small_and_safe_to_load():
    assert MODEL_FILE.is_file()
    assert MODEL_FILE.stat().st_size < 1_000_000
    data = torch.load(MODEL_FILE, weights_only=True)
    assert data["format"] == MODEL_FORMAT
    assert data["plugins"]["predictor"]["name"] == "mlp" and data["config"]["integrator"] == "leapfrog"
    assert data["calibration"] is not None and all(0 < f < 4 for f in data["calibration"]["safety"])


def test_learned_is_registered_and_carries_its_calibrated_safety_factor(host):
    entry = host.predictors.get("learned")
    assert entry.plugin == "plugins.learned_predictor"
    pred = host.predictors.create("learned", feedback=False)
    saved = torch.load(MODEL_FILE, weights_only=True)
    stored = pred.upgrade_state_dict(dict(saved["predictor_state"]))["log_safety"]
    assert pred.safety == pytest.approx(stored.exp().tolist())
    assert sorted(set(pred.safety)) == pytest.approx(sorted(set(saved["calibration"]["safety"])))
    assert not pred.training


def test_learned_flies_the_network_inside_a_controller_steered_to_its_training_gate(host):
    pred = host.predictors.create("learned")
    network = host.predictors.create("learned", feedback=False)
    assert isinstance(pred, FeedbackDt) and type(pred.base.base) is type(network) and not pred.base.base.training
    gate = torch.load(MODEL_FILE, weights_only=True)["config"]["energy_threshold"]
    assert (pred.target, pred.ceiling) == pytest.approx((FEEDBACK_TARGET * gate, FEEDBACK_CEILING * gate))
    state = make_preset("kepler", eccentricity=0.5).state
    assert torch.equal(pred(state), pred.base(state))  # before any step is observed: the capped network's dt exactly
    uncapped = host.predictors.create("learned", error_cap=False)
    assert torch.equal(uncapped(state), network(state))


def test_a_model_argument_names_the_shipped_model_or_a_file_to_load(host, tmp_path):
    state = make_preset("kepler", eccentricity=0.5).state
    shipped = host.predictors.create("learned", feedback=False, **model_options("learned"))(state)
    halved = torch.load(MODEL_FILE, weights_only=True)
    halved["predictor_state"]["log_safety"] = halved["predictor_state"]["log_safety"] - np.log(2.0)
    halved["checksum"] = {"algorithm": "sha256", "digest": payload_digest(halved)}
    torch.save(halved, tmp_path / "halved.pt")
    other = host.predictors.create("learned", feedback=False, **model_options(str(tmp_path / "halved.pt")))(state)
    assert torch.allclose(other, shipped / 2, rtol=1e-12)


def test_learned_flies_time_symmetric_on_request_with_the_same_weights(host):
    """``time_symmetric=True`` overrides the model file's option: the smaller of the shipped network's dt forward
    and with every velocity reversed, inside the controller as usual."""
    kepler = make_preset("kepler", eccentricity=0.9).state
    falling = kepler.replace(position=kepler.position + 0.3 * kepler.velocity)
    network = host.predictors.create("learned", feedback=False)
    forward, backward = network(falling), network(falling.replace(velocity=-falling.velocity))
    symmetric = host.predictors.create("learned", time_symmetric=True)
    assert isinstance(symmetric, FeedbackDt) and symmetric.base.options["time_symmetric"]
    assert not network.options["time_symmetric"] and not torch.allclose(forward, backward, rtol=1e-3)
    assert torch.allclose(symmetric(falling), torch.minimum(forward, backward), rtol=1e-12, atol=0)


@pytest.mark.parametrize("preset, params, orbits", [
    ("kepler", {"eccentricity": 0.6}, 2.0),
    ("kepler", {"eccentricity": 0.3, "masses": (1.0, 0.05)}, 2.0),
    ("figure-eight", {}, 1.0),
])
def test_learned_flies_systems_unguarded_through_the_gate(host, preset, params, orbits):
    system = make_preset(preset, **params)
    integrator = host.integrators.create("leapfrog")
    report = evaluate_predictor(system, integrator, host.predictors.create("learned"),
                                orbits=orbits, threshold=2e-4)[0]
    assert report.pass_fraction >= 0.99
    # and it is not timid: far fewer steps than the constant dt that passes at pericentre would need
    assert report.steps < 2000 * orbits


def test_simulate_a_state_file_with_the_learned_predictor(tmp_path, capsys):
    state = make_preset("plummer", n=6, seed=2).state
    save_state(tmp_path / "s.npz", state)
    code = main(["simulate", "--state", str(tmp_path / "s.npz"), "--predictor", "learned", "--t-end", "1",
                 "--out", str(tmp_path / "t.npz"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    traj = np.load(tmp_path / "t.npz")
    assert traj["time"][-1, 0] == pytest.approx(1.0)
    assert float(np.mean(traj["rel_dE"] <= 2e-4)) >= 0.95


def _fly(host, state, t_end: float) -> np.ndarray:
    """The dts `learned` takes over [0, t_end] of ``state`` (one system), unguarded."""
    traj = simulate(state, host.integrators.create("leapfrog"), host.predictors.create("learned"),
                    t_end=t_end, max_steps=10_000)
    dt = traj.dt[:, 0]
    return dt[dt > 0]


def test_a_run_of_learned_does_not_depend_on_units_orientation_or_labels(host):
    """The whole shipped rule (network, error cap and controller) sees physics only: a hierarchical triple flown in
    other units (length x 5.2, mass x 1e-3, G = 4 pi^2), turned about a skew axis, moved and with its bodies
    relabelled takes the same steps, each dt scaled by the time unit sqrt(L^3 / (G M))."""
    inner = initial_conditions.kepler(eccentricity=0.6, semi_major_axis=0.2, masses=(1.0, 0.4), dim=3)
    outer = initial_conditions.kepler(eccentricity=0.2, semi_major_axis=2.0, masses=(1.4, 0.3), dim=3)
    # the inner binary's centre of mass on the outer orbit's first body
    position = torch.cat([inner.position + outer.position[:, :1], outer.position[:, 1:]], 1)
    velocity = torch.cat([inner.velocity + outer.velocity[:, :1], outer.velocity[:, 1:]], 1)
    state = physics.to_center_of_mass_frame(NBodyState.from_arrays([[1.0, 0.4, 0.3]], position, velocity))
    length, mass, G = 5.2, 1e-3, 4 * np.pi ** 2
    time = float(np.sqrt(length ** 3 / (G * mass)))
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    rotation = torch.linalg.matrix_exp(torch.cross(torch.eye(3, dtype=torch.float64), (axis / axis.norm()).expand(3, 3),
                                                   dim=-1) * 1.1)
    order = [2, 0, 1]
    other = NBodyState.from_arrays(
        state.mass[:, order] * mass,
        (state.position[:, order] @ rotation.T + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)) * length,
        state.velocity[:, order] @ rotation.T * (length / time), G=G)
    steps = _fly(host, state, 4.0)
    moved = _fly(host, other, 4.0 * time)
    assert len(steps) > 100 and len(moved) == len(steps)
    np.testing.assert_allclose(moved / time, steps, rtol=1e-7)


def test_learned_takes_a_state_of_another_precision_and_answers_in_it(host):
    """The network holds float64 weights; a float32 state is read in float64 and its dt comes back in float32."""
    system = make_preset("kepler", eccentricity=0.7)
    single = system.state.to(dtype=torch.float32)
    network = host.predictors.create("learned", feedback=False)
    dt = network(single)
    assert dt.dtype == torch.float32
    assert torch.allclose(dt.double(), network(system.state), rtol=1e-5)
    report = evaluate_predictor(system, host.integrators.create("leapfrog"), host.predictors.create("learned"),
                                orbits=1.0)[0]
    traj = simulate(single, host.integrators.create("leapfrog"), host.predictors.create("learned"),
                    t_end=float(system.period[0]))
    steps = int((traj.dt[:, 0] > 0).sum())
    assert abs(steps - report.steps) <= 2 and float(np.mean(traj.rel_dE[:steps, 0] <= 2e-4)) >= 0.99
