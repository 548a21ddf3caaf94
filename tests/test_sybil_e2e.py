"""Issue 10 on real processes: eight copies of one cheap model join a running network in round
3 and do not capture it (earned influence; docs/SYBIL.md). More than 5 node processes: run it
under the machine-wide lock, `flock /work/testnet.lock python -m pytest tests/test_sybil_e2e.py`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from netutil import finish, start_testnet

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sybil")
    driver = start_testnet(out, "--encoders", "honest:3,cheapcopy:8@3", "--rounds", "4")
    code = finish(driver, out, 800)
    assert code == 0, (out / "driver.log").read_text()[-4000:]
    rep: dict[str, Any] = json.loads((out / "report.json").read_text())
    return rep


def scores(rnd: dict[str, Any], kind: str) -> list[float]:
    return [float(row["score"]) for row in rnd["ranking"] if row["kind"] == kind]


def test_late_copies_join_in_round_3_and_rank_below_every_honest(report: dict[str, Any]) -> None:
    rounds = {r["round"]: r for r in report["rounds"]}
    assert sorted(rounds) == [1, 2, 3, 4]
    assert all(r["finalized"] for r in rounds.values())
    for r in (1, 2):
        assert scores(rounds[r], "cheapcopy") == []  # not started yet
        assert len(scores(rounds[r], "honest")) == 3
    baseline = by_encoder(rounds[2], "honest")
    assert min(baseline.values()) > 0.5
    for r in (3, 4):
        copies, honest = scores(rounds[r], "cheapcopy"), by_encoder(rounds[r], "honest")
        assert len(copies) == 8 and honest.keys() == baseline.keys()
        assert min(honest.values()) > max(copies), (r, honest, copies)
        for key, score in honest.items():
            assert abs(score - baseline[key]) < 0.05, (r, key, score, baseline[key])


def by_encoder(rnd: dict[str, Any], kind: str) -> dict[str, float]:
    return {row["encoder"]: float(row["score"]) for row in rnd["ranking"] if row["kind"] == kind}
