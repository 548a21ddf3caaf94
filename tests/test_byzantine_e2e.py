"""A byzantine validator on real processes (issue 9, finding 3): `dlnet testnet` with 4 equal
validators, one listing 1,024 made-up encoder keys in every attestation. Every round must still
finalize, with a result of only the encoders that committed, and the driver must exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netutil import finish, start_testnet

from dlnet.protocol.config import parse_config

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(600)]

ROUNDS = 2
# 40 s rounds give scoring 6 s to attest: at 20 s (3 s) a loaded 2-core machine misses it.


def test_made_up_encoders_neither_void_nor_pad_the_certificates(tmp_path: Path) -> None:
    driver = start_testnet(
        tmp_path,
        *("--validators", "4", "--byzantine", "1:fake-encoders"),
        *("--encoders", "noise:3", "--rounds", str(ROUNDS), "--round-seconds", "40"),
    )
    code = finish(driver, tmp_path, 400)
    log = (tmp_path / "driver.log").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    byz = tmp_path / "nodes" / "validator-0" / "node.log"
    # The byzantine validator pads every attestation up to the most an attestation may list.
    limit = parse_config((tmp_path / "network.toml").read_text()).registration.listed_limit
    assert f"attested {limit} encoders" in byz.read_text(), "the byzantine mode did not run"
    assert report["processes"]["validator-0"]["kind"] == "byzantine:fake-encoders"
    assert len(report["rounds"]) == ROUNDS
    for rnd in report["rounds"]:
        assert rnd["finalized"] and not rnd["empty"], (rnd["round"], log[-3000:])
        assert rnd["only_real_encoders"], rnd["round"]
        assert {row["encoder"] for row in rnd["ranking"]} == set(report["encoders"])
    assert code == 0, log[-3000:]
    assert f"summary: {ROUNDS} of {ROUNDS} rounds finalized" in log
