"""Issue 10 on real processes: eight copies of one cheap model join a running network in round
3 (exactly: `--first-round`) and do not capture it (earned influence, registration;
docs/SYBIL.md). More than 5 node processes: run it under the machine-wide lock,
`flock /work/testnet.lock python -m pytest tests/test_sybil_e2e.py`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from netutil import finish, start_testnet

from dlnet.protocol.config import parse_config
from dlnet.protocol.consensus import (
    MissingEmbeddings,
    compute_result,
    consensus_matrix,
    usable_attestations,
)
from dlnet.protocol.errors import Reject
from dlnet.protocol.result import U16_MAX
from dlnet.protocol.wire import Attestation, Embedding, decode

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("sybil")
    driver = start_testnet(out, "--encoders", "honest:3,cheapcopy:8@3", "--rounds", "5")
    finish(driver, out, 800)  # exit 1 if a round did not finalize: checked below, round by round
    rep: dict[str, Any] = json.loads((out / "report.json").read_text())
    return rep, out


def attested(
    out: Path, validator: str = "validator-0", honest: frozenset[str] = frozenset()
) -> tuple[dict[int, dict[str, float]], dict[int, list[float]]]:
    """Per round, each encoder's consensus score (the κ-median of the attestations the
    validator stored, as the round result takes them): the scoring's verdict even in a round
    whose votes did not reach finality; and per round the cosine, per shard, of the round
    result's weighted embedding (computed from those attestations and the stored full
    embeddings) to the mean of the ``honest`` encoders' full embeddings."""
    cfg = parse_config((out / "network.toml").read_text())
    db = sqlite3.connect(out / "nodes" / validator / "node.sqlite")
    held: dict[int, list[Attestation]] = {}
    fulls: dict[int, dict[tuple[int, bytes], np.ndarray]] = {}
    for rnd, data in db.execute("SELECT round, data FROM messages"):
        with contextlib.suppress(Reject):
            msg = decode(data, cfg)
            if isinstance(msg, Attestation):
                held.setdefault(int(rnd), []).append(msg)
            elif isinstance(msg, Embedding) and msg.slot == 0:
                fulls.setdefault(int(rnd), {})[(msg.shard, msg.encoder)] = msg.array()
    db.close()
    scores, cosines = {}, {}
    for rnd, atts in held.items():
        used = usable_attestations(cfg, rnd, atts)
        if not used:
            continue
        view = consensus_matrix(cfg, used)
        scores[rnd] = {
            key.hex(): int(view.consensus[:, e].sum()) // cfg.shards_per_round / U16_MAX
            for e, key in enumerate(view.encoders)
        }
        try:
            res = compute_result(
                cfg, rnd, used, fulls.get(rnd, {}), texts=(bytes(32),) * cfg.shards_per_round
            )
        except MissingEmbeddings:
            continue
        cosines[rnd] = []
        for s in range(cfg.shards_per_round):
            vec = np.frombuffer(res.weighted[s], dtype="<f4").astype(np.float64)
            own = [v for (sh, k), v in fulls.get(rnd, {}).items() if sh == s and k.hex() in honest]
            if not own:
                continue
            mean = np.mean(np.array(own, dtype=np.float64), axis=0)
            norm = np.linalg.norm(vec) * np.linalg.norm(mean)
            cosines[rnd].append(float(vec @ mean / norm) if norm > 0 else 0.0)
    return scores, cosines


def test_late_copies_rank_below_every_honest_encoder(run: tuple[dict[str, Any], Path]) -> None:
    report, out = run
    kinds: dict[str, str] = report["encoders"]
    honest = {k for k, kind in kinds.items() if kind == "honest"}
    copies = {k for k, kind in kinds.items() if kind == "cheapcopy"}
    assert len(honest) == 3 and len(copies) == 8
    finalized = {r["round"]: r for r in report["rounds"] if r["finalized"]}
    assert {1, 2} <= finalized.keys()
    scores, cosines = attested(out, honest=frozenset(honest))
    joined = [r for r in sorted(scores) if copies <= scores[r].keys()]
    assert joined and joined[0] == 3, joined  # `@3` means round 3 (--first-round 3)
    assert all(not (copies & scores[r].keys()) for r in (1, 2))
    for r in range(3, 6):
        assert min(scores[r][k] for k in honest) > max(scores[r][k] for k in copies), r
        for k in honest:
            assert abs(scores[r][k] - scores[2][k]) < 0.05, (r, k, scores[r][k], scores[2][k])
        assert r in cosines and min(cosines[r]) >= 0.99, (r, cosines.get(r))
        if r in finalized:  # the certified ranking says the same
            ranked = [row["encoder"] for row in finalized[r]["ranking"]]
            assert max(ranked.index(k) for k in honest) < min(ranked.index(k) for k in copies)
