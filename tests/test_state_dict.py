"""NBodyState.to_dict / from_dict: the one serialisation of a state, used by state files and checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from systems import random_cluster

from nbtoolkit.errors import InvalidStateError
from nbtoolkit.physics import state_accelerations, state_energy
from nbtoolkit.state import NBodyState

#: the keys of a stored state, as checkpoints have always held them
STORED_KEYS = {"mass", "position", "velocity", "time", "G", "softening", "acceleration"}


def weights_only_copy(data: dict) -> dict:
    """``data`` written with torch.save and read back with weights_only=True, as checkpoints are."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state(a: NBodyState, b: NBodyState) -> None:
    for name in ("mass", "position", "velocity", "time"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.G == b.G and a.softening == b.softening
    assert (a.acceleration is None) == (b.acceleration is None)
    if a.acceleration is not None:
        assert torch.equal(a.acceleration, b.acceleration)


def test_round_trip_through_a_weights_only_file_keeps_everything():
    state = random_cluster(3, 5, softening=0.03).replace(G=2.5, time=torch.tensor([0.0, 1.0 / 3.0, 7.25],
                                                                                 dtype=torch.float64))
    state = state.replace(acceleration=state_accelerations(state))
    data = state.to_dict()
    assert set(data) == STORED_KEYS
    assert isinstance(data["G"], float) and isinstance(data["softening"], float)
    again = NBodyState.from_dict(weights_only_copy(data))
    assert_same_state(again, state)
    assert again.softening == 0.03 and again.G == 2.5


def test_to_dict_detaches_and_moves_to_the_cpu():
    state = random_cluster(2, 3)
    moving = state.replace(velocity=state.velocity.clone().requires_grad_(True))
    data = moving.to_dict()
    assert not data["velocity"].requires_grad and data["velocity"].device.type == "cpu"
    assert data["acceleration"] is None


def test_the_external_field_is_left_out_and_attached_again(host):
    field = host.fields.create("plummer-host", mass=50.0, radius=3.0)
    state = random_cluster(2, 4, softening=0.01).replace(field=field)
    state = state.replace(acceleration=state_accelerations(state))
    data = weights_only_copy(state.to_dict())  # a field object would not survive weights_only
    assert set(data) == STORED_KEYS
    again = NBodyState.from_dict(data)
    assert again.field is None
    assert not torch.allclose(state_energy(again), state_energy(state))  # the field's energy is missing ...
    attached = again.replace(field=field)
    assert attached.field is field and attached.acceleration is None  # ... until it is attached again
    assert torch.equal(state_energy(attached), state_energy(state))
    assert torch.equal(state_accelerations(attached), state.acceleration)


def test_numpy_arrays_in_tensors_out_and_the_stored_dtype_is_kept():
    state = random_cluster(2, 3)
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.to_dict().items()}
    again = NBodyState.from_dict(arrays)
    assert isinstance(again.position, torch.Tensor)
    assert_same_state(again, state)

    single = state.index(0).to(dtype=torch.float32)
    data = single.to_dict()
    assert NBodyState.from_dict(data).dtype == torch.float32
    unbatched = {"mass": data["mass"][0].numpy(), "position": data["position"][0].numpy(),
                 "velocity": data["velocity"][0].numpy()}
    loaded = NBodyState.from_dict(unbatched)
    assert loaded.dtype == torch.float32 and loaded.batch_size == 1
    assert loaded.G == 1.0 and loaded.softening == 0.0 and torch.equal(loaded.time, torch.zeros(1))
    assert NBodyState.from_dict(unbatched, dtype=torch.float64).dtype == torch.float64
    ints = NBodyState.from_dict({"mass": np.array([1, 2]), "position": np.array([[0, 0], [1, 0]]),
                                 "velocity": np.zeros((2, 2), dtype=np.int64), "time": 3})
    assert ints.dtype == torch.float64 and ints.time.tolist() == [3.0]


def test_from_dict_validates_and_names_where_and_the_key():
    data = random_cluster(2, 3).to_dict()
    with pytest.raises(InvalidStateError, match=r"^run.npz: missing key\(s\) 'velocity'"):
        NBodyState.from_dict({k: v for k, v in data.items() if k != "velocity"}, where="run.npz")
    with pytest.raises(InvalidStateError, match=r"^here: 'time' must have shape \(B,\) = \(2,\)"):
        NBodyState.from_dict({**data, "time": torch.zeros(3, dtype=torch.float64)}, where="here")
    with pytest.raises(InvalidStateError, match=r"^here: 'softening' must be finite and >= 0"):
        NBodyState.from_dict({**data, "softening": -1.0}, where="here")
    with pytest.raises(InvalidStateError, match=r"^here: 'acceleration': expected real numbers"):
        NBodyState.from_dict({**data, "acceleration": np.array(["a"])}, where="here")

    padded = {**data, "mass": data["mass"].clone()}
    padded["mass"][0, 2] = 0.0
    with pytest.raises(InvalidStateError, match="'mass' must be > 0; system 0, body 2"):
        NBodyState.from_dict(padded)
    assert NBodyState.from_dict(padded, allow_padding=True).body_mask.sum().item() == 5


def test_checkpoints_keep_the_state_layout_and_restore_it(tmp_path):
    from nbtoolkit.presets import make_preset
    from nbtoolkit.training import TrainConfig, Trainer

    state = make_preset("kepler-batch", num_orbits=2).state
    config = TrainConfig(epochs=1, predictor_options={"hidden_width": 4, "hidden_layers": 1}, calibrate_pass_rate=0)
    trainer = Trainer(config, state)
    path = trainer.save_checkpoint(tmp_path / "m.pt")
    data = torch.load(path, weights_only=True)
    for key in ("state", "initial_state"):
        assert set(data[key]) == STORED_KEYS, key
        assert_same_state(NBodyState.from_dict(data[key]), state)
    assert_same_state(Trainer.from_checkpoint(path).state, state)
