"""State files: saving and loading :class:`~nbtoolkit.state.NBodyState` as NumPy ``.npz`` archives.

File layout (all arrays numeric, no pickled objects):

* ``mass``      (B, N)      or (N,) for a single system
* ``position``  (B, N, D)   or (N, D)
* ``velocity``  (B, N, D)   or (N, D)
* ``time``      (B,)        optional (default 0); a scalar is broadcast to every system
* ``G``         scalar      optional (default 1)
* ``softening`` scalar      optional (default 0)

Other keys are ignored, so an archive may carry extra data beside the state. Files are written
atomically: to a temporary file in the target directory, then renamed over the target, so a
reader never sees a half-written file and an interrupted write leaves the old file intact.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .errors import InvalidStateError, InvalidStateFileError, StateFileError
from .state import DEFAULT_DTYPE, NBodyState

PathLike = str | os.PathLike[str]

#: keys every state file must hold
REQUIRED_KEYS = ("mass", "position", "velocity")
#: optional scalar keys and their defaults
SCALAR_DEFAULTS = {"G": 1.0, "softening": 0.0}

_ZIP_MAGIC = b"PK"  # local file header (PK\x03\x04) or empty archive (PK\x05\x06)
_NPY_MAGIC = b"\x93NUMPY"


def save_npz_atomic(path: PathLike, **arrays: Any) -> Path:
    """Write ``arrays`` (names -> array-likes) to an uncompressed ``.npz`` at exactly ``path``.

    No suffix is added. The data go to a temporary file in the same directory, are flushed to
    disk, and the file is renamed over ``path`` (``os.replace``), so the write is atomic.
    Object arrays are refused (they would need pickle to read back). Raises
    :class:`StateFileError` if the directory does not exist or is not writable.
    """
    target = Path(path)
    prepared: dict[str, Any] = {}
    for key, value in arrays.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.dtype == object:
            raise StateFileError(f"{target}: cannot store key '{key}': object arrays are not allowed")
        prepared[key] = array
    try:
        atomic_write(target, lambda handle: np.savez(handle, **prepared))
    except OSError as exc:
        raise StateFileError(f"{target}: cannot write into directory '{target.parent}': {exc.strerror or exc}") from exc
    return target


def save_state(path: PathLike, state: NBodyState) -> Path:
    """Save ``state`` to ``path`` (atomically, see :func:`save_npz_atomic`).

    Keys: mass (B, N), position and velocity (B, N, D), time (B,), G and softening (scalars).
    The acceleration cache is not stored. Returns the path written.
    """
    data = state.numpy()
    return save_npz_atomic(
        path,
        mass=data["mass"],
        position=data["position"],
        velocity=data["velocity"],
        time=data["time"],
        G=np.float64(state.G),
        softening=np.float64(state.softening),
    )


def _allowed_dtype(dtype: np.dtype) -> bool:
    """Integers and floats of at most 64 bits (float128 and friends have no torch dtype)."""
    return dtype.kind in "iu" or (dtype.kind == "f" and dtype.itemsize <= 8)


def _available_memory() -> int | None:
    from .validate import available_memory

    return available_memory()


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _preflight(path: Path) -> None:
    """Read the archive's directory and the ``.npy`` headers of the state's keys without loading any
    data: refuse members that are not ``.npy`` arrays, compressions zipfile cannot read, dtypes
    that are not real numbers of <= 64 bits, headers that claim more data than the member holds,
    and states whose arrays and force evaluation would not fit in the memory available."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise StateFileError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    with zf:
        members = {info.filename: info for info in zf.infolist()}
        for key in (*REQUIRED_KEYS, "time", *SCALAR_DEFAULTS):
            info = members.get(f"{key}.npy")
            if info is None:
                if key in members:
                    raise StateFileError(f"{path}: member '{key}' is not a .npy array (an .npz stores key '{key}' as "
                                         f"'{key}.npy')")
                continue
            try:
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    header_end = member.tell()
            except NotImplementedError as exc:
                raise StateFileError(f"{path}: key '{key}' uses a zip compression this reader does not support ({exc}); "
                                     "store the arrays uncompressed (numpy.savez) or deflated (numpy.savez_compressed)") from None
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
                raise StateFileError(f"{path}: key '{key}' is not a valid .npy array ({exc})") from None
            if dtype.hasobject or not _allowed_dtype(dtype):
                raise StateFileError(f"{path}: key '{key}' must hold real numbers (integers or floats of at most 64 "
                                     f"bits); it has dtype {dtype}")
            count = 1
            for n in shape:
                count *= int(n)
            claimed = count * dtype.itemsize
            if claimed > info.file_size - header_end:
                raise StateFileError(
                    f"{path}: key '{key}' claims shape {shape} ({_gib(claimed)} of {dtype}) but its member holds only "
                    f"{info.file_size - header_end} bytes of data; the file is corrupt or forged"
                )
            shapes[key] = tuple(int(n) for n in shape)
    position = shapes.get("position")
    if position and len(position) in (2, 3):
        from .validate import check_state_memory

        B = position[0] if len(position) == 3 else 1
        check_state_memory(B, position[-2], position[-1], str(path), available=_available_memory, error=StateFileError)


def _numeric(archive: Any, path: Path, key: str) -> np.ndarray:
    """Read ``key`` as a real numeric array, with a :class:`StateFileError` naming it otherwise."""
    try:
        array = archive[key]
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise StateFileError(f"{path}: key '{key}' cannot be read without pickle ({exc})") from exc
    except NotImplementedError as exc:
        raise StateFileError(f"{path}: key '{key}' uses an unsupported zip compression ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        raise StateFileError(f"{path}: key '{key}' is corrupt: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise StateFileError(f"{path}: key '{key}' is not a .npy array")
    if not _allowed_dtype(array.dtype):
        raise StateFileError(f"{path}: key '{key}' must hold real numbers (integers or floats of at most 64 bits); "
                             f"it has dtype {array.dtype}")
    return array


def _scalar(archive: Any, path: Path, key: str) -> float:
    if key not in archive.files:
        return SCALAR_DEFAULTS[key]
    value = _numeric(archive, path, key)
    if value.size != 1:
        raise StateFileError(f"{path}: key '{key}' must be a scalar; got shape {value.shape}")
    return float(value.reshape(()))


def load_state(path: PathLike, dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
    """Load a state written by :func:`save_state` (or by hand, see the module docstring).

    A file without the batch dimension (mass (N,), position (N, D)) gives B = 1; missing
    ``time``/``G``/``softening`` default to 0/1/0. The state is validated with the path as the
    location. Pickle is never used. Raises :class:`StateFileError` naming the path and the key
    for a missing file, a file that is not an ``.npz`` archive, a missing key or a wrong shape,
    and :class:`InvalidStateFileError` (a :class:`StateFileError` and an
    :class:`~nbtoolkit.errors.InvalidStateError`) for a well-formed file holding an invalid state.
    """
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: no such state file" if not path.exists() else f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if magic.startswith(_NPY_MAGIC):
        raise StateFileError(f"{path}: is a single .npy array, not an .npz archive with keys {', '.join(REQUIRED_KEYS)}")
    if not magic.startswith(_ZIP_MAGIC):
        raise StateFileError(f"{path}: not an .npz archive (no zip signature at the start of the file)")
    _preflight(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise StateFileError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc
    with archive:
        for key in REQUIRED_KEYS:
            if key not in archive.files:
                raise StateFileError(
                    f"{path}: missing key '{key}' (found: {', '.join(archive.files) or 'none'}); "
                    f"a state file needs {', '.join(REQUIRED_KEYS)}"
                )
        mass = _numeric(archive, path, "mass")
        position = _numeric(archive, path, "position")
        velocity = _numeric(archive, path, "velocity")
        time = _numeric(archive, path, "time") if "time" in archive.files else None
        G = _scalar(archive, path, "G")
        softening = _scalar(archive, path, "softening")

    if mass.ndim == 1 and position.ndim == 2:  # one system without the batch dimension
        mass, position = mass[None], position[None]
        if velocity.ndim == 2:
            velocity = velocity[None]
    if mass.ndim != 2:
        raise StateFileError(f"{path}: key 'mass' must have shape (B, N) or (N,); got {mass.shape}")
    B, N = mass.shape
    if position.ndim != 3 or position.shape[:2] != (B, N) or position.shape[2] not in (2, 3):
        raise StateFileError(
            f"{path}: key 'position' must have shape (B, N, D) = ({B}, {N}, 2 or 3) to match mass {mass.shape}; "
            f"got {position.shape}"
        )
    if velocity.shape != position.shape:
        raise StateFileError(f"{path}: key 'velocity' has shape {velocity.shape}; expected {position.shape} like position")
    if time is None:
        time = np.zeros(B)
    elif time.ndim == 0:
        time = np.full(B, float(time))
    elif time.shape != (B,):
        raise StateFileError(f"{path}: key 'time' must have shape ({B},) or be a scalar; got {time.shape}")

    state = NBodyState.from_arrays(
        mass, position, velocity, time, G=G, softening=softening, dtype=dtype, validate=False
    )
    try:
        return state.validate(where=str(path))
    except InvalidStateError as exc:
        raise InvalidStateFileError(str(exc)) from exc


__all__ = ["InvalidStateFileError", "REQUIRED_KEYS", "load_state", "save_npz_atomic", "save_state"]
