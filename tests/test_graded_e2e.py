"""Grading as a network test: a testnet of the default model and degraded copies of it whose
order is known by construction — less added noise is better, more transformer layers are
better — ranked by real validators over libp2p on 127.0.0.1 (docs/VALIDITY.md has the full
graded family against supervised quality; this is the part that needs no labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from netutil import finish, start_testnet

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(900)]

ENCODERS = (
    "honest:4,noisy@0.5:1,noisy@1:1,noisy@2:1,truncated@4:1,truncated@1:1,fabricated@0.2:1,"
    "leaky@0.5:1"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out: Path = tmp_path_factory.mktemp("graded")
    driver = start_testnet(out, "--encoders", ENCODERS, "--rounds", "2", "--round-seconds", "60")
    code = finish(driver, out, 600)
    assert code == 0, (out / "driver.log").read_text()[-4000:]
    data: dict[str, Any] = json.loads((out / "report.json").read_text())
    return data


def scores(rnd: dict[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in rnd["ranking"]:
        out.setdefault(row["kind"], []).append(row["score"])
    return out


def test_every_round_finalizes_with_one_digest(report: dict[str, Any]) -> None:
    assert len(report["rounds"]) == 2
    for rnd in report["rounds"]:
        assert rnd["finalized"], rnd["round"]
        assert {v["result_digest"] for v in rnd["validators"].values()} == {rnd["result_digest"]}


def test_noise_ladder_is_in_order_every_round(report: dict[str, Any]) -> None:
    for rnd in report["rounds"]:
        s = scores(rnd)
        ladder = [min(s["honest"]), s["noisy@0.5"][0], s["noisy@1"][0], s["noisy@2"][0]]
        # noise at twice the signal may be cut as an outlier (0): never above noise at 1x.
        assert ladder[0] > ladder[1] > ladder[2] > 0.0, (rnd["round"], ladder)
        assert ladder[2] > ladder[3], (rnd["round"], ladder)


def test_more_layers_rank_higher(report: dict[str, Any]) -> None:
    mean = {
        k: float(np.mean([scores(rnd)[k][0] for rnd in report["rounds"]]))
        for k in ("truncated@4", "truncated@1")
    }
    assert mean["truncated@4"] > mean["truncated@1"] > 0.0, mean
    for rnd in report["rounds"]:
        assert max(scores(rnd)["truncated@4"]) < min(scores(rnd)["honest"]), rnd["round"]


def test_leaking_the_full_into_the_halves_ranks_below_every_honest_encoder(
    report: dict[str, Any],
) -> None:
    """An honest residual with half the honest DL: a one-sided DL reward ranked it first."""
    for rnd in report["rounds"]:
        s = scores(rnd)
        assert 0.0 < s["leaky@0.5"][0] < min(s["honest"]), (rnd["round"], s)


def test_jittered_forgery_ranks_below_every_real_model_but_the_gated(
    report: dict[str, Any],
) -> None:
    """Its full and mask embeddings are honest and its DL is in the honest range; only how its
    inverse fails to compose gives it away."""
    for rnd in report["rounds"]:
        s = scores(rnd)
        forged = s["fabricated@0.2"][0]
        real = [
            v
            for k, vs in s.items()
            if k not in ("fabricated@0.2", "leaky@0.5")
            for v in vs
            if v > 0
        ]
        assert forged < min(real), (rnd["round"], forged, s)
