"""Shared fixtures."""

from __future__ import annotations

import pytest

from nbtoolkit import get_host


@pytest.fixture
def host():
    """The process-wide plugin host (tests that register plugins remove them again)."""
    return get_host()
