"""Atomic writes: complete-or-nothing, no temporary files left, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from nbtoolkit.atomic import atomic_write


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x.bin", lambda handle: handle.write(b"new"))
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
