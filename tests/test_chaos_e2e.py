"""A short subset of the chaos suite (scripts/chaos.py) on real processes over 127.0.0.1:
kill -9 and restart of one validator mid-round, and half of the stake SIGSTOPped for three
rounds. Every honest node survives, no two honest validators hold conflicting certificates, a
round finalizes whenever more than 2/3 of the stake is live for the whole of it, and no round
does while half of the stake is stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from netutil import kill_nodes_under

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(1200)]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"
SCENARIOS = ("kill-restart-validator", "stop-two-of-four")


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("chaos")
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--json", str(out / "chaos.json")]
    for name in SCENARIOS:
        cmd += ["--scenario", name]
    log = open(out / "driver.log", "wb")  # noqa: SIM115 - closed below
    driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        driver.wait(timeout=1000)
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGTERM)  # the driver stops its nodes by PID
        driver.wait(timeout=60)
        raise AssertionError(f"chaos did not finish in time; see {out}/driver.log") from None
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        kill_nodes_under(out)
        log.close()
    text = (out / "driver.log").read_text()
    assert (out / "chaos.json").exists(), text[-4000:]
    report = json.loads((out / "chaos.json").read_text())
    for r in report["scenarios"]:
        assert r["result"] in ("pass", "FAIL"), (r["scenario"], r["result"], r.get("reason"))
    return {r["scenario"]: r for r in report["scenarios"]}


@pytest.mark.parametrize("name", SCENARIOS)
def test_honest_nodes_survive_and_never_conflict(
    rows: dict[str, dict[str, Any]], name: str
) -> None:
    row = rows[name]
    assert row["crashes"] == 0, row["crash_list"]
    assert row["conflicts"] == 0, [r["digests"] for r in row["rounds"]]
    assert row["fake_encoders"] == 0


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_round_with_two_thirds_live_finalizes(
    rows: dict[str, dict[str, Any]], name: str
) -> None:
    row = rows[name]
    assert row["expected"] >= 1, row["rounds"]
    assert row["final"] == row["expected"], [(r["round"], r["expect"]) for r in row["rounds"]]


def test_a_killed_validator_restarts_and_agrees(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["kill-restart-validator"]
    assert row["down"]["validator-1"], "the victim was killed"
    assert row["expected"] == len(row["rounds"]), "3 of 4 validators are live in every round"
    assert not row["crash_list"] and row["exit_codes"]["validator-1"] is not None
    undisturbed = [r for r in row["rounds"] if "validator-1" not in r["disturbed"]]
    assert undisturbed[-1] == row["rounds"][-1], "rounds after the restart were run"
    for rnd in (r for r in undisturbed if r["finalized"]):  # it caught up, certifies on
        assert "validator-1" in rnd["certified_by"], (rnd["round"], rnd["certified_by"])


def test_half_the_stake_stopped_gives_no_certificate(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["stop-two-of-four"]
    assert row["not_final_rounds"] >= 1, [(r["round"], r["expect"]) for r in row["rounds"]]
    assert row["unexpected"] == 0, [(r["round"], r["certified_by"]) for r in row["rounds"]]


def test_surviving_validators_lose_no_message(rows: dict[str, dict[str, Any]]) -> None:
    """Issue 9, finding 6: a validator stalled on a dead peer during sync misses reveals the
    network holds (fails on the tree before the issue-9 fixes). Not asserted for
    `stop-two-of-four`: with half the stake SIGSTOPped, a validator whose gossip mesh is the
    stopped peers still misses reveals of a round (docs/RELIABILITY.md, open)."""
    row = rows["kill-restart-validator"]
    assert row["lost"] == 0, [(r["round"], r["lost"]) for r in row["rounds"] if r["lost"]]
