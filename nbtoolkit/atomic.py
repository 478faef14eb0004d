"""Atomic file writes shared by state files, trajectories and checkpoints.

The temporary file is named ``.<target name>.<host>.<pid>.<random>.tmp`` in the target's
directory. A writer killed before its rename (``kill -9``, a power cut) leaves that file
behind; the next write of the same target removes such leftovers whose process is gone (same
host and no process with that id) or that are older than :data:`STALE_AFTER_S` seconds.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: a temporary file of an unknown writer (another host, an older version) older than this is stale
STALE_AFTER_S = 24 * 3600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that killed writers of ``target`` left in its directory; returns them."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = f".{target.name}."
    own = re.compile(re.escape(prefix) + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        match = own.match(path.name)
        try:
            if match and match["host"] == _host_tag():
                stale = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
            else:
                stale = now - path.stat().st_mtime > STALE_AFTER_S
            if stale:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old file or the complete new one.

    ``write(handle)`` fills a temporary file in the target's directory; the data are flushed to
    disk, the file gets the permissions a plain ``open(path, "wb")`` would give it, it is
    renamed over ``path`` and the directory is fsynced so the rename survives a crash. On any
    failure the temporary file is removed and the exception propagates (``OSError`` for I/O
    problems), leaving an existing ``path`` untouched. Temporary files left by killed writers
    of the same target are removed first (see the module docstring).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_host_tag()}.{os.getpid()}.", suffix=".tmp", dir=folder)
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
    _fsync_directory(folder)
    return target
