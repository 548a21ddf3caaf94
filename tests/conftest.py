"""Fixtures shared by the test modules, and the test tiers (docs/TESTING.md).

* Tests marked ``network`` start real processes or real libp2p hosts. Under pytest-xdist
  the end-to-end ones (modules ``*_e2e``: whole networks of node processes) run on one
  worker, one at a time (``xdist_group("processes")``), so that two networks never share
  the cores (they are timing-sensitive); the host tests (a few small libp2p peers each) run
  one at a time on another worker (``xdist_group("hosts")``), beside them; the in-process
  tests fill the workers. A test that names its own ``xdist_group`` keeps it.
* Tests marked ``heavy`` are long real-process runs whose behaviour the in-process layer also
  covers: skipped, with the reason shown, unless ``--heavy`` is given (or ``-m`` names them).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import Nodes

HEAVY_SKIP = "heavy real-process test: run with --heavy (docs/TESTING.md)"

# PYTHONDONTWRITEBYTECODE (set on the team's machines) also stops pytest from caching the test
# modules it rewrites for its assertion messages, and Python from caching dlnet's bytecode:
# every pytest-xdist worker then parsed, rewrote and compiled every test module again (~6 s
# of CPU each, more than half of collecting). Set here, before any test module is imported;
# the caches are __pycache__ folders, which git ignores.
sys.dont_write_bytecode = False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--heavy",
        action="store_true",
        help="also run the heavy real-process tests (many node processes, minutes each)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    heavy = bool(config.getoption("--heavy")) or "heavy" in str(config.getoption("-m") or "")
    for item in items:
        if item.get_closest_marker("network") and not item.get_closest_marker("xdist_group"):
            e2e = item.module is not None and item.module.__name__.endswith("_e2e")
            item.add_marker(pytest.mark.xdist_group("processes" if e2e else "hosts"))
        if item.get_closest_marker("heavy") and not heavy:
            item.add_marker(pytest.mark.skip(reason=HEAVY_SKIP))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """Node processes started by a test, every one killed by PID when it ends."""
    running = Nodes(tmp_path)
    try:
        yield running
    finally:
        running.kill()
