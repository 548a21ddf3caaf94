"""Issue 10 on real processes: a pool of 1 or 2 encoders is too small to check (fewer voices
than `min_encoders_for_lof`), so its rounds certify scores of 0 and an all-zero weighted
embedding, never one unchecked encoder's output (docs/PROTOCOL.md §2.5, docs/SYBIL.md).
Four node processes each (bootstrap, one validator, the encoders): no machine-wide lock needed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from netutil import finish, start_testnet

from dlnet.protocol.config import parse_config
from dlnet.protocol.wire import Certificate, Kind, decode

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(480)]


@pytest.mark.parametrize("count", [1, 2])
def test_a_pool_too_small_to_check_certifies_no_output(tmp_path: Path, count: int) -> None:
    driver = start_testnet(
        tmp_path,
        "--validators",
        "1",
        "--encoders",
        f"honest:{count}",
        "--rounds",
        "2",
        "--round-seconds",
        "40",
    )
    finish(driver, tmp_path, 420)  # exit 1 if a round had no encoder up: checked below
    cfg = parse_config((tmp_path / "network.toml").read_text())
    db = sqlite3.connect(tmp_path / "nodes" / "validator-0" / "node.sqlite")
    rows = db.execute("SELECT round, data FROM certificates ORDER BY round").fetchall()
    db.close()
    certs = [decode(data, cfg, Kind.CERTIFICATE) for _, data in rows]
    named = [c for c in certs if isinstance(c, Certificate) and c.result.encoders]
    assert named, f"no certified round named an encoder: {[r for r, _ in rows]}"
    for cert in named:
        result = cert.result
        assert 1 <= len(result.encoders) <= count
        assert set(result.encoder_scores) == {0}, (cert.round, result.encoder_scores)
        assert all(w == bytes(4 * cfg.dim) for w in result.weighted), cert.round
