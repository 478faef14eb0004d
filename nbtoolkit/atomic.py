"""Atomic file writes shared by state files, trajectories and checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    ``write(handle)`` fills a temporary file in the target's directory; the data are flushed to
    disk, the file gets the permissions a plain ``open(path, "wb")`` would give it, and it is
    renamed over ``path``. On any failure the temporary file is removed and the exception
    propagates (``OSError`` for I/O problems), leaving an existing ``path`` untouched.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
