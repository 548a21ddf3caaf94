"""Findings 1 and 2 of issue 9 on real processes: a peer that answers sync pulls with poison
(msgpack 500 deep, a signed commit for round 2**63, a commit for round + 50) and a peer that
floods sync requests. Every validator stays up, stores none of the poison, rate-limits and
bans the flooder, its log grows by < 100 KB, and every round still finalizes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netutil import finish, start_testnet, wait_json

from dlnet.node.store import Store
from dlnet.protocol.wire import Kind

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(900)]

HOSTILE = Path(__file__).with_name("hostile_peer.py")
VICTIM = "validator-1"
ROUNDS = 2


def hostile(out: Path, mode: str, bootstrap: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(HOSTILE),
            "--mode",
            mode,
            "--config",
            str(out / "network.toml"),
            "--bootstrap",
            bootstrap,
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def test_poisoning_and_flooding_peers_neither_crash_nor_stall_a_validator(tmp_path: Path) -> None:
    out = tmp_path
    driver = start_testnet(
        out, "--validators", "2", "--encoders", "honest:2", "--rounds", str(ROUNDS)
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        info = wait_json(out / "nodes" / VICTIM / "node.json", 120)
        addr = info["addrs"][0]
        procs.append(hostile(out, "poison-sync", addr, 60.0))
        time.sleep(5.0)
        log = out / "nodes" / VICTIM / "node.log"
        before = log.stat().st_size
        flood = hostile(out, "flood-sync", addr, 4.0)
        stats = json.loads(flood.communicate(timeout=60)[0].decode().strip().splitlines()[-1])
        grown = log.stat().st_size - before
    finally:
        code = finish(driver, out, 600)
        for p in procs:
            p.kill()
            p.wait()
    assert code == 0, (out / "driver.log").read_text()[-4000:]
    assert stats["failed"] > stats["answered"], stats  # rate-limited, then banned
    assert grown < 100_000
    assert "Traceback" not in log.read_text()
    report = json.loads((out / "report.json").read_text())
    assert all(r["finalized"] for r in report["rounds"])
    store = Store.open(out / "nodes" / VICTIM / "node.sqlite")
    try:
        for rnd in range(ROUNDS + 2):
            assert store.messages(int(Kind.COMMIT), rnd + 50) == []
        assert store.messages(int(Kind.COMMIT), 2**63 - 1) == []
    finally:
        store.close()
