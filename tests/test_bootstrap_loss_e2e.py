"""Issue 9, finding 7: kill the bootstrap, then kill -9 and restart a validator with only the
dead bootstrap on its command line. It reconnects to the peers it saved (peers.json, same
peer id from peer.key) and the network keeps finalizing every round, the restarted
validator included."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from netutil import finish, kill_pid, start_testnet, wait_json

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(900)]

ROUNDS = 4
VICTIM = "validator-1"


def test_validator_restarted_after_the_bootstrap_died_rejoins(tmp_path: Path) -> None:
    out = tmp_path
    driver = start_testnet(
        out, "--validators", "3", "--encoders", "honest:2,noise:1", "--rounds", str(ROUNDS)
    )
    restarted: subprocess.Popen[bytes] | None = None
    try:
        boot = wait_json(out / "nodes" / "bootstrap" / "node.json", 120)
        info = wait_json(out / "nodes" / VICTIM / "node.json", 120)
        net = tomllib.loads((out / "network.toml").read_text())
        genesis, round_seconds = net["network"]["genesis_time"], net["timing"]["round_seconds"]
        # In round 2: the bootstrap dies, then the validator; it restarts 3 s later.
        time.sleep(max(0.0, genesis + 2 * round_seconds + 2 - time.time()))
        kill_pid(boot["pid"])
        time.sleep(2.0)
        kill_pid(info["pid"])
        time.sleep(3.0)
        (out / "nodes" / VICTIM / "node.json").unlink()
        assert any(a in info["argv"] for a in boot["addrs"])  # only the dead bootstrap given
        log = open(out / "nodes" / VICTIM / "restart.log", "wb")  # noqa: SIM115
        restarted = subprocess.Popen(
            [sys.executable, "-m", "dlnet.node", *info["argv"]], stdout=log, stderr=log
        )
        again = wait_json(out / "nodes" / VICTIM / "node.json", 60)
        assert again["peer_id"] == info["peer_id"]
    finally:
        finish(driver, out, 600)
        if restarted is not None:
            kill_pid(restarted.pid)
            restarted.wait()
    report = json.loads((out / "report.json").read_text())
    for rnd in report["rounds"]:
        assert rnd["finalized"], rnd["round"]
        digests = {key: v["result_digest"] for key, v in rnd["validators"].items()}
        assert set(digests.values()) == {rnd["result_digest"]}, (rnd["round"], digests)
        if rnd["round"] >= 3:  # the rounds after its restart: the victim agreed too
            assert digests.get(info["public_key"]) == rnd["result_digest"], rnd["round"]
