"""The testnet report counts a round as finalized only with a certificate that verifies: never
one whose result is empty or was computed without attestations of more than 2/3 of the stake,
and never on a validator's word (its recorded outcome) alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import numpy as np

from dlnet.node import report
from dlnet.node.report import STORE_FILE, format_testnet, round_ok
from dlnet.node.store import Store
from dlnet.node.testnet import Proc
from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.consensus import compute_result
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import RoundResult, result_digest
from dlnet.protocol.wire import Certificate, encode, sign_attestation, sign_vote

VALIDATORS = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
ENCODERS = sorted(SigningKey.from_seed(bytes([50 + i]) * 32).public_key for i in range(3))
CFG = default_config(
    [ValidatorEntry(k.public_key, 100) for k in VALIDATORS],
    1_800_000_000,
    dataset_sha256=bytes(32),
)
GOOD, EMPTY, UNATTESTED, CLAIMED = 1, 2, 3, 4


def _result(rnd: int) -> RoundResult:
    grid = np.array([[60000, 30000, 5]] * CFG.shards_per_round, dtype="<u2")
    flags = np.array([[0, 0, 1]] * CFG.shards_per_round, dtype=np.uint8)
    atts = [
        sign_attestation(
            k, CFG.network_id, rnd, tuple(ENCODERS), grid.tobytes(), flags.tobytes(), bytes(32)
        )
        for k in VALIDATORS
    ]
    rng = np.random.default_rng(rnd)
    fulls = {
        (s, e): rng.standard_normal(CFG.dim).astype(np.float32)
        for s in range(CFG.shards_per_round)
        for e in ENCODERS
    }
    return compute_result(CFG, rnd, atts, fulls, texts=(bytes(32),) * CFG.shards_per_round)


def _certificate(rnd: int, result: RoundResult) -> bytes:
    """Signed by every validator: only the result decides whether it verifies."""
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, CFG.network_id, rnd, digest).signature) for k in VALIDATORS
    )
    return encode(Certificate(CFG.network_id, rnd, result, tuple(votes)))


def _validator(tmp_path: Path, i: int, missed: bytes | None = None) -> Proc:
    d = tmp_path / f"v{i}"
    d.mkdir()
    store = Store.open(d / STORE_FILE)
    good = _result(GOOD)
    empty = dataclasses.replace(
        _result(EMPTY), encoders=(), consensus=(), outliers=(), encoder_scores=(), ranking=()
    )
    unattested = dataclasses.replace(_result(UNATTESTED), agreement=())
    for rnd, res in ((GOOD, good), (EMPTY, empty), (UNATTESTED, unattested)):
        store.put_certificate(rnd, _certificate(rnd, res))
        store.put_round_outcome(rnd, True, result_digest(res))
    store.put_round_outcome(CLAIMED, True, bytes(32))  # a recorded outcome, no certificate
    held = {
        e.hex(): {"expected": 20, "held": 20, "equivocated": False} for e in ENCODERS if e != missed
    }
    for rnd in range(GOOD, CLAIMED + 1):
        store.put_round_state(rnd, "reveals", json.dumps(held).encode())
    store.close()
    key = VALIDATORS[i].public_key.hex()
    return Proc(f"v{i}", "validator", "validator", d, cast(Any, None), public_key=key)


def _encoders(tmp_path: Path) -> Proc:
    """The three encoders as one process of a grouped testnet."""
    group = Proc("encoders-honest-0", "encoder", "honest", tmp_path, cast(Any, None))
    group.identities = [(f"encoder-{i}-honest", "honest", e.hex()) for i, e in enumerate(ENCODERS)]
    return group


def test_only_verifying_certificates_finalize_a_round(tmp_path: Path) -> None:
    procs = [_validator(tmp_path, i) for i in range(3)] + [_encoders(tmp_path)]
    rep = report.testnet_report(CFG, procs, range(GOOD, CLAIMED + 1))
    good, empty, unattested, claimed = rep["rounds"]
    # The control: the same certificate over a full result is final.
    assert good["finalized"] and round_ok(good)
    assert all(v["certified"] for v in good["validators"].values())
    assert good["refused_certificates"] == {}
    assert [row["kind"] for row in good["ranking"]] == ["honest"] * 3  # grouped identities
    for r, reason in (
        (empty, "empty_result"),
        (unattested, "insufficient_attestations"),
        (claimed, None),
    ):
        assert not r["finalized"] and not round_ok(r), r["round"]
        assert r["ranking"] == [] and r["result_digest"] is None
        assert all(v["finalized"] and not v["certified"] for v in r["validators"].values())
        assert r["refused_certificates"] == ({reason: 3} if reason else {})
    lines = format_testnet(rep).splitlines()
    for rnd in (EMPTY, UNATTESTED, CLAIMED):
        assert f"round {rnd}: not finalized" in "\n".join(lines)
        assert not any(line.startswith(f"round {rnd}: FINALIZED") for line in lines)
    assert any("certificate refused (empty_result) x3" in line for line in lines)
    assert any("certificate refused (insufficient_attestations) x3" in line for line in lines)
    assert any("without a valid certificate" in line for line in lines)
    assert lines[-1].endswith(f"FAILED rounds: {EMPTY}, {UNATTESTED}, {CLAIMED}")


def test_a_commit_some_validators_did_not_count_is_marked(tmp_path: Path) -> None:
    """An encoder whose commit reached only some validators in time: the report says how many
    counted it, so a low score is not read as the scoring's verdict on its model."""
    late = ENCODERS[0]
    procs = [_validator(tmp_path, i, late if i == 2 else None) for i in range(3)]
    rep = report.testnet_report(CFG, [*procs, _encoders(tmp_path)], range(GOOD, GOOD + 1))
    counted = {row["encoder"]: row["counted_by"] for row in rep["rounds"][0]["ranking"]}
    assert counted == {e.hex(): 2 if e == late else 3 for e in ENCODERS}
    marked = [line for line in format_testnet(rep).splitlines() if "commit counted by" in line]
    assert len(marked) == 1 and late.hex()[:12] in marked[0] and "2 of 3" in marked[0]
