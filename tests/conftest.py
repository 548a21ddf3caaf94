"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import Nodes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Node processes started by a test, every one killed by PID when it ends."""
    running = Nodes(tmp_path)
    try:
        yield running
    finally:
        running.kill()
