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
#: the array keys of a state file (``time`` optional)
ARRAY_KEYS = (*REQUIRED_KEYS, "time")
#: the optional scalar keys of a state file
SCALAR_KEYS = ("G", "softening")

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

    Keys: mass (B, N), position and velocity (B, N, D), time (B,), G and softening (scalars), from
    :meth:`NBodyState.to_dict`. Neither the acceleration cache nor an external field is stored.
    Returns the path written.
    """
    data = state.to_dict()
    return save_npz_atomic(path, **{key: data[key] for key in (*ARRAY_KEYS, *SCALAR_KEYS)})


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
        for key in (*ARRAY_KEYS, *SCALAR_KEYS):
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
    value = _numeric(archive, path, key)
    if value.size != 1:
        raise StateFileError(f"{path}: key '{key}' must be a scalar; got shape {value.shape}")
    return float(value.reshape(()))


def load_state(path: PathLike, dtype: torch.dtype = DEFAULT_DTYPE) -> NBodyState:
    """Load a state written by :func:`save_state` (or by hand, see the module docstring).

    The arrays are read here and the state is built and validated by
    :meth:`NBodyState.from_dict` with the path as the location: a file without the batch
    dimension (mass (N,), position (N, D)) gives B = 1; missing ``time``/``G``/``softening``
    default to 0/1/0. Pickle is never used. Raises :class:`StateFileError` naming the path and the
    key for a missing file, a file that is not an ``.npz`` archive, a missing key or one that does
    not hold real numbers (a scalar for ``G`` and ``softening``), and :class:`InvalidStateFileError`
    (a :class:`StateFileError` and an :class:`~nbtoolkit.errors.InvalidStateError`) for arrays that
    do not form a valid state: shapes that do not fit together, non-finite values, masses <= 0, ...
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
        data: dict[str, Any] = {key: _numeric(archive, path, key) for key in ARRAY_KEYS if key in archive.files}
        data.update((key, _scalar(archive, path, key)) for key in SCALAR_KEYS if key in archive.files)
    try:
        return NBodyState.from_dict(data, where=str(path), dtype=dtype)
    except InvalidStateError as exc:
        raise InvalidStateFileError(str(exc)) from exc


__all__ = ["InvalidStateFileError", "REQUIRED_KEYS", "load_state", "save_npz_atomic", "save_state"]
