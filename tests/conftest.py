"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from nbtoolkit import get_host


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests' tensors are tiny: one intra-op thread avoids thread-sync overhead (as the viewer
    does on 2 cores). Restored at the end of the session."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def host():
    """The process-wide plugin host (tests that register plugins remove them again)."""
    return get_host()
