"""State files: exact round trip, lenient layouts, atomic writes and one clear error per malformed file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import nbtoolkit.io as nio
from nbtoolkit.errors import InvalidStateError, StateFileError
from nbtoolkit.io import InvalidStateFileError, load_state, save_npz_atomic, save_state
from nbtoolkit.presets import kepler_batch, plummer
from nbtoolkit.state import NBodyState


def good_arrays() -> dict[str, np.ndarray]:
    """A valid two-system, three-body, 2-D state file content."""
    rng = np.random.default_rng(0)
    return {
        "mass": rng.uniform(0.5, 2.0, (2, 3)),
        "position": rng.normal(size=(2, 3, 2)),
        "velocity": rng.normal(size=(2, 3, 2)),
        "time": np.array([0.5, 1.5]),
        "G": np.float64(2.0),
        "softening": np.float64(0.01),
    }


def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def assert_states_identical(a: NBodyState, b: NBodyState) -> None:
    for name in ("mass", "position", "velocity", "time"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.G == b.G and a.softening == b.softening


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = plummer(n=8, seed=2, softening=0.03, num_systems=3)
    state = state.replace(time=torch.tensor([0.0, 1.0 / 3.0, 7.25], dtype=torch.float64), G=1.0)
    path = save_state(tmp_path / "cluster.npz", state)
    assert path == tmp_path / "cluster.npz"
    assert_states_identical(load_state(path), state)

    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"mass", "position", "velocity", "time", "G", "softening"}
        assert data["mass"].shape == (3, 8) and data["position"].shape == (3, 8, 3)
        assert data["velocity"].shape == (3, 8, 3) and data["time"].shape == (3,)
        assert data["G"].shape == () and float(data["softening"]) == 0.03


def test_round_trip_keeps_G_and_extra_precision(tmp_path: Path) -> None:
    state = kepler_batch(num_orbits=4, G=3.5, dim=3)
    path = save_state(tmp_path / "kb.npz", state)
    loaded = load_state(path)
    assert_states_identical(loaded, state)
    assert load_state(path, dtype=torch.float32).dtype == torch.float32


def test_unbatched_file_without_optional_keys(tmp_path: Path) -> None:
    path = write_npz(
        tmp_path / "single.npz",
        mass=np.array([1.0, 2.0, 3.0]),
        position=np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]),
        velocity=np.zeros((3, 3)),
    )
    state = load_state(path)
    assert state.mass.shape == (1, 3) and state.position.shape == (1, 3, 3)
    assert torch.equal(state.time, torch.zeros(1, dtype=torch.float64))
    assert state.G == 1.0 and state.softening == 0.0
    assert state.mass.dtype == torch.float64


def test_integer_arrays_and_scalar_time_are_accepted(tmp_path: Path) -> None:
    arrays = good_arrays()
    arrays.update(mass=np.array([[1, 2, 3], [1, 1, 1]]), time=np.float64(4.0))
    state = load_state(write_npz(tmp_path / "ints.npz", **arrays))
    assert torch.equal(state.time, torch.tensor([4.0, 4.0], dtype=torch.float64))
    assert torch.equal(state.mass[0], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_extra_keys_are_ignored(tmp_path: Path) -> None:
    state = load_state(write_npz(tmp_path / "more.npz", dt=np.ones(5), **good_arrays()))
    assert state.batch_size == 2


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kepler_batch(num_orbits=2)
    path = save_state(tmp_path / "state.npz", first)

    def broken_savez(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nio.np, "savez", broken_savez)
    with pytest.raises(StateFileError, match="No space left"):
        save_state(path, kepler_batch(num_orbits=5))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]
    assert_states_identical(load_state(path), first)  # the old file survived intact

    second = plummer(n=4)
    save_state(path, second)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]
    assert_states_identical(load_state(path), second)


def test_save_npz_atomic_writes_exactly_the_given_name(tmp_path: Path) -> None:
    path = save_npz_atomic(tmp_path / "trajectory.data", t=torch.arange(3.0), x=[[1, 2], [3, 4]])
    assert path.name == "trajectory.data" and sorted(p.name for p in tmp_path.iterdir()) == ["trajectory.data"]
    with np.load(path, allow_pickle=False) as data:
        assert np.array_equal(data["t"], [0.0, 1.0, 2.0]) and np.array_equal(data["x"], [[1, 2], [3, 4]])


def test_save_refuses_object_arrays_and_missing_directories(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="'bad'"):
        save_npz_atomic(tmp_path / "x.npz", bad=np.array([1, "a"], dtype=object))
    with pytest.raises(StateFileError, match="missing"):
        save_state(tmp_path / "missing" / "x.npz", plummer(n=3))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- malformed files
def without(key: str) -> dict[str, np.ndarray]:
    arrays = good_arrays()
    del arrays[key]
    return arrays


def with_(**changes: object) -> dict[str, object]:
    arrays: dict[str, object] = dict(good_arrays())
    arrays.update(changes)
    return arrays


MALFORMED = {
    "missing mass": (without("mass"), "mass"),
    "missing position": (without("position"), "position"),
    "missing velocity": (without("velocity"), "velocity"),
    "mass 3-D": (with_(mass=np.ones((2, 3, 1))), "mass"),
    "position wrong N": (with_(position=np.zeros((2, 4, 2))), "position"),
    "position D = 4": (with_(position=np.zeros((2, 3, 4)), velocity=np.zeros((2, 3, 4))), "position"),
    "velocity shape": (with_(velocity=np.zeros((2, 3, 3))), "velocity"),
    "time shape": (with_(time=np.zeros(3)), "time"),
    "G not scalar": (with_(G=np.array([1.0, 2.0])), "G"),
    "softening not scalar": (with_(softening=np.zeros((2, 2))), "softening"),
    "mass strings": (with_(mass=np.array([["a", "b", "c"]] * 2)), "mass"),
    "velocity complex": (with_(velocity=np.zeros((2, 3, 2), dtype=complex)), "velocity"),
    "position pickled objects": (with_(position=np.array([object()] * 3, dtype=object)), "position"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_path_and_key(tmp_path: Path, case: str) -> None:
    arrays, key = MALFORMED[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are pickled by numpy here; load_state must refuse them
    with pytest.raises(StateFileError) as info:
        load_state(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message


@pytest.mark.parametrize("content", [b"mass,position\n1,2\n", b""])
def test_not_an_npz_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.npz"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="not an .npz archive") as info:
        load_state(path)
    assert str(path) in str(info.value)


def test_truncated_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **good_arrays())
    path = tmp_path / "state.npz"
    path.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(StateFileError, match="not a readable .npz archive") as info:
        load_state(path)
    assert str(path) in str(info.value)


def test_single_npy_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "positions.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(StateFileError, match=r"\.npy"):
        load_state(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="no such state file") as info:
        load_state(tmp_path / "nowhere.npz")
    assert "nowhere.npz" in str(info.value)
    with pytest.raises(StateFileError, match="not a regular file"):
        load_state(tmp_path)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"mass": np.array([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])}, "mass"),
        ({"position": np.full((2, 3, 2), np.nan)}, "position"),
        ({"G": np.float64(0.0)}, "G"),
        ({"softening": np.float64(-0.1)}, "softening"),
    ],
)
def test_invalid_state_in_a_well_formed_file(tmp_path: Path, changes: dict, field: str) -> None:
    path = write_npz(tmp_path / "invalid.npz", **with_(**changes))
    with pytest.raises(InvalidStateFileError) as info:
        load_state(path)
    assert isinstance(info.value, StateFileError) and isinstance(info.value, InvalidStateError)
    assert str(path) in str(info.value) and field in str(info.value)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, **with_(time=np.array([{"a": 1}, None], dtype=object)))
    import pickle

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle must not be used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(StateFileError, match="'time'"):
        load_state(path)
    assert zipfile.is_zipfile(path)
