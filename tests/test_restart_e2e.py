"""kill -9 a validator in the middle of a round, restart it on the same store and key: it
catches up from its store and its peers and agrees with the others on every round."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from netutil import finish, kill_pid, start_testnet, wait_json

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(900)]

ROUNDS = 3
VICTIM = "validator-1"


def test_validator_killed_mid_round_restarts_and_agrees(tmp_path: Path) -> None:
    out = tmp_path
    driver = start_testnet(
        out, "--validators", "3", "--encoders", "honest:3,noise:1", "--rounds", str(ROUNDS)
    )
    restarted: subprocess.Popen[bytes] | None = None
    try:
        info = wait_json(out / "nodes" / VICTIM / "node.json", 120)
        net = tomllib.loads((out / "network.toml").read_text())
        genesis = net["network"]["genesis_time"]
        timing = net["timing"]
        # Round 2, a second after its commit deadline: commits held, reveals under way.
        kill_at = genesis + 2 * timing["round_seconds"] + timing["commit_seconds"] + 1
        time.sleep(max(0.0, kill_at - time.time()))
        kill_pid(info["pid"])
        time.sleep(3.0)
        (out / "nodes" / VICTIM / "node.json").unlink()
        log = open(out / "nodes" / VICTIM / "restart.log", "wb")  # noqa: SIM115
        restarted = subprocess.Popen(
            [sys.executable, "-m", "dlnet.node", *info["argv"]], stdout=log, stderr=log
        )
        wait_json(out / "nodes" / VICTIM / "node.json", 60)
    finally:
        code = finish(driver, out, 600)
        if restarted is not None:
            kill_pid(restarted.pid)
            restarted.wait()
    assert code == 0, (out / "driver.log").read_text()[-4000:]
    report = json.loads((out / "report.json").read_text())
    for rnd in report["rounds"]:
        assert rnd["finalized"], rnd["round"]
        digests = {key: v["result_digest"] for key, v in rnd["validators"].items()}
        assert set(digests.values()) == {rnd["result_digest"]}, (rnd["round"], digests)
