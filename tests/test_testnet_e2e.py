"""The default testnet as a test: real processes, libp2p over 127.0.0.1, bounded in time.

While it runs, a hostile peer (tests/hostile_peer.py) joins and publishes malformed and
forged bytes on every topic; the network must reject and count them and keep working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from netutil import finish, start_testnet, wait_json

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(900)]

HONEST = {"honest", "truncated"}
HOSTILE = Path(__file__).with_name("hostile_peer.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("testnet")
    driver = start_testnet(out)
    try:
        boot = wait_json(out / "nodes" / "bootstrap" / "node.json", 120)
        hostile = subprocess.run(
            [
                sys.executable,
                str(HOSTILE),
                "--config",
                str(out / "network.toml"),
                "--bootstrap",
                boot["addrs"][0],
            ],
            capture_output=True,
            timeout=180,
            check=True,
        )
    finally:
        code = finish(driver, out, 600)
    assert code == 0, (out / "driver.log").read_text()[-4000:]
    report = json.loads((out / "report.json").read_text())
    return report, json.loads(hostile.stdout.decode().strip().splitlines()[-1])


def test_every_round_finalizes_with_one_digest(run: tuple[dict[str, Any], dict[str, Any]]) -> None:
    report, _ = run
    assert len(report["rounds"]) == 3
    for rnd in report["rounds"]:
        assert rnd["finalized"], rnd["round"]
        digests = {v["result_digest"] for v in rnd["validators"].values()}
        assert digests == {rnd["result_digest"]}, rnd["round"]


def test_honest_encoders_rank_above_every_adversary(
    run: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """Over the encoders whose commit every validator counted. One that reached only some in
    time (on a loaded machine an encoder that came up late commits near the deadline) is
    scored by what those saw; the report marks it (``counted_by``), and every honest encoder
    must be counted by every validator in some round."""
    report, _ = run
    everywhere: set[str] = set()
    for rnd in report["rounds"]:
        rows = rnd["ranking"]
        assert {row["encoder"] for row in rows} == set(report["encoders"])
        full = [row for row in rows if row["counted_by"] == len(rnd["validators"])]
        everywhere |= {row["encoder"] for row in full}
        kinds = [row["kind"] for row in full]
        honest_last = max(i for i, k in enumerate(kinds) if k in HONEST)
        adversary_first = min(i for i, k in enumerate(kinds) if k not in HONEST)
        assert honest_last < adversary_first, (rnd["round"], rows)
        scores = {row["kind"]: row["score"] for row in rows if row["kind"] not in HONEST}
        assert scores.get("copycat", 0.0) == 0.0
        assert scores.get("equivocator", 0.0) == 0.0
        worst_honest = min(row["score"] for row in full if row["kind"] in HONEST)
        assert worst_honest > 0.0
    honest = {enc for enc, kind in report["encoders"].items() if kind in HONEST}
    assert honest <= everywhere, honest - everywhere


def test_no_reveal_of_an_honest_encoder_is_lost(
    run: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    report, _ = run
    for rnd in report["rounds"]:
        for vkey, v in rnd["validators"].items():
            assert v["reveals_expected"] > 0, (rnd["round"], vkey)
            assert v["reveals_held"] == v["reveals_expected"], (rnd["round"], vkey)


def test_earlier_rounds_resent_verbatim_are_ignored_and_counted(
    run: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """The replay encoder re-sends its 21 messages of each earlier round byte for byte; sync
    fetches count their duplicates apart (sync:duplicate), so these counters are re-sends."""
    report, _ = run
    ignored = report["ignored"]
    resent = sum(ignored.get(k, 0) for k in ("duplicate", "old_round", "late_commit"))
    assert resent > 20, ignored


def test_hostile_bytes_are_rejected_by_reason_and_crash_nobody(
    run: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    report, sent = run
    rejected = report["rejected"]
    for reason in sent["reasons"]:
        assert rejected.get(reason, 0) > 0, (reason, rejected)
    for name, proc in report["processes"].items():
        assert proc["exit_code"] == 0, (name, proc)


def test_validators_and_bootstrap_stay_under_300_mb(
    run: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    report, _ = run
    for role in ("validator", "bootstrap"):
        assert 0 < report["peak_rss_mb"][role] < 300, report["peak_rss_mb"]
