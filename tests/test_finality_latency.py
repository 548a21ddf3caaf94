"""Finality latency: what a validator records when it finalizes a round (or adopts a
certificate by catch-up), and how the testnet report summarises it across validators."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from dlnet.node import report
from dlnet.node.report import (
    STORE_FILE,
    finality_latency,
    format_testnet,
    latency_summary,
    outcome_rows,
)
from dlnet.node.store import FINALIZED_AT, Store
from dlnet.node.testnet import Proc
from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import round_times

CFG = default_config(
    [ValidatorEntry(SigningKey.generate().public_key, 1) for _ in range(3)],
    1_700_000_000,
    dataset_sha256=bytes(32),
)


def test_own_finalization_records_latency_and_slack(tmp_path: Path) -> None:
    store = Store.open(tmp_path / STORE_FILE)
    t = round_times(CFG, 2)
    store.put_round_outcome(2, True, b"\1" * 32)
    store.put_finalized_at(2, t.reveal_deadline + 3.25, t)
    rec = store.finalized_at(2)
    assert rec is not None
    assert (rec["via"], rec["latency"]) == ("own", 3.25)
    assert rec["slack"] == t.finality_deadline - (t.reveal_deadline + 3.25)
    assert finality_latency(store, 2) == 3.25
    # A later catch-up of the same round keeps what the validator measured itself.
    store.put_finalized_at(2, t.finality_deadline + 60, None)
    assert finality_latency(store, 2) == 3.25
    store.close()


def test_catch_up_has_no_latency_and_garbage_reads_as_none(tmp_path: Path) -> None:
    store = Store.open(tmp_path / STORE_FILE)
    store.put_round_outcome(4, True, b"\1" * 32)
    store.put_finalized_at(4, 1_700_000_999.0, None)
    store.put_round_outcome(5, True, b"\2" * 32)
    store.put_round_state(5, FINALIZED_AT, b"not json")
    store.put_round_outcome(6, False, None)
    rows = {r["round"]: r for r in outcome_rows(store)}
    assert (rows[4]["latency"], rows[4]["caught_up"]) == (None, True)
    assert (rows[5]["latency"], rows[5]["caught_up"]) == (None, False)
    assert (rows[6]["latency"], rows[6]["caught_up"]) == (None, False)
    store.close()


def test_latency_summary() -> None:
    assert latency_summary([3.0, None, 1.0, 2.0, 10.0]) == {"p50": 2.0, "max": 10.0, "n": 4}
    assert latency_summary([None, None]) == {"p50": None, "max": None, "n": 0}


def _validator(tmp_path: Path, name: str, latencies: dict[int, float | None]) -> Proc:
    d = tmp_path / name
    d.mkdir()
    store = Store.open(d / STORE_FILE)
    for rnd, latency in latencies.items():
        store.put_round_outcome(rnd, True, b"\1" * 32)
        if latency is not None:
            t = round_times(CFG, rnd)
            store.put_finalized_at(rnd, t.reveal_deadline + latency, t)
    store.close()
    return Proc(name, "validator", "validator", d, cast(Any, None), public_key=name)


def test_testnet_report_shows_latency_per_round(tmp_path: Path) -> None:
    procs = [
        _validator(tmp_path, "v1", {1: 2.0, 2: None}),
        _validator(tmp_path, "v2", {1: 4.0, 2: None}),
        _validator(tmp_path, "v3", {1: 9.0}),
    ]
    rep = report.testnet_report(CFG, procs, range(1, 3), stopped_at=1234.5)
    assert rep["stopped_at"] == 1234.5  # where scripts/bench_scale.py ends its CPU window
    r1, r2 = rep["rounds"]
    assert {k: v["latency"] for k, v in r1["validators"].items()} == {
        "v1": 2.0,
        "v2": 4.0,
        "v3": 9.0,
    }
    assert r1["latency"] == {"p50": 4.0, "max": 9.0, "n": 3}
    assert r2["latency"] == {"p50": None, "max": None, "n": 0}
    assert all(v["latency"] is None for v in r2["validators"].values())
    text = format_testnet(rep).splitlines()
    assert any(line.startswith("  finality latency") and "p50 4.0 s" in line for line in text)
    assert sum("finality latency (after" in line for line in text) == 1  # round 2 has none
    assert any(line.startswith("finality latency: p50 4.0 s, max 9.0 s over 3") for line in text)
