"""The consensus scores a testnet's validator held, per round, from the attestations it stored.

    python scripts/attested_scores.py OUT [--validator validator-0]

OUT is a `dlnet testnet --out` directory (network.toml, report.json, nodes/*/node.sqlite). For
every round with attestations, the κ-median consensus of the attestations the validator stored
(`protocol.consensus.usable_attestations` and `consensus_matrix`, as the round result would
take them) gives each encoder's mean score over the shards and its outlier shards, listed by
kind. Unlike report.json's ranking, which is read from certified results, it also shows rounds
that did not finalise (e.g. a vote split under load). With the stored full embeddings it also
recomputes the round result (`compute_result`): its digest and, per shard, the cosine of the
weighted embedding to the mean of the `honest` encoders' full embeddings and its norm ratio,
and each non-honest encoder's share of it (least-squares decomposition over the weighted
encoders' fulls, |a_i| ||f_i|| / sum_j |a_j| ||f_j||) against its weight share.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np

from dlnet.protocol.config import parse_config
from dlnet.protocol.consensus import (
    MissingEmbeddings,
    compute_result,
    consensus_matrix,
    usable_attestations,
)
from dlnet.protocol.errors import Reject
from dlnet.protocol.result import U16_MAX, result_digest
from dlnet.protocol.wire import Attestation, Embedding, decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--validator", default="validator-0")
    args = ap.parse_args()
    cfg = parse_config((args.out / "network.toml").read_text())
    kinds = json.loads((args.out / "report.json").read_text())["encoders"]
    db = sqlite3.connect(args.out / "nodes" / args.validator / "node.sqlite")
    rounds = sorted(r for (r,) in db.execute("SELECT DISTINCT round FROM messages"))
    for rnd in rounds:
        held = []
        fulls: dict[tuple[int, bytes], np.ndarray] = {}
        for (data,) in db.execute("SELECT data FROM messages WHERE round = ?", (rnd,)):
            try:
                msg = decode(data, cfg)
            except Reject:
                continue
            if isinstance(msg, Attestation):
                held.append(msg)
            elif isinstance(msg, Embedding) and msg.slot == 0:
                fulls[(msg.shard, msg.encoder)] = msg.array()
        used = usable_attestations(cfg, rnd, held)
        if not used:
            continue
        view = consensus_matrix(cfg, used)
        rows = []
        for e, key in enumerate(view.encoders):
            score = int(view.consensus[:, e].sum()) // cfg.shards_per_round / U16_MAX
            flagged = int(view.outliers[:, e].sum())
            rows.append((score, kinds.get(key.hex(), "?"), key.hex()[:8], flagged))
        rows.sort(reverse=True)
        print(f"round {rnd}: {len(used)} attestations")
        for score, kind, key, flagged in rows:
            print(f"  {kind:14s} {key} {score:.3f}  outlier shards {flagged}")
        try:
            res = compute_result(cfg, rnd, used, fulls, texts=(bytes(32),) * cfg.shards_per_round)
        except MissingEmbeddings as exc:
            print(f"  result: {len(exc.missing)} full embeddings missing")
            continue
        # The shard texts are left unnamed (zeros), so this digest is not the certified one.
        print(f"  result digest {result_digest(res).hex()[:16]} (shard texts unnamed)")
        honest = [bytes.fromhex(k) for k, kind in kinds.items() if kind == "honest"]
        for s in range(cfg.shards_per_round):
            vec = np.frombuffer(res.weighted[s], dtype="<f4").astype(np.float64)
            own = [fulls[(s, k)].astype(np.float64) for k in honest if (s, k) in fulls]
            if not own or not vec.any():
                print(f"  shard {s}: weighted embedding {'zero' if own else 'no honest fulls'}")
                continue
            mean = np.mean(own, axis=0)
            cos = float(np.sum(vec * mean) / np.linalg.norm(vec) / np.linalg.norm(mean))
            ratio = float(np.linalg.norm(vec) / np.linalg.norm(mean))
            print(f"  shard {s}: cosine to the honest mean {cos:.4f}, norm ratio {ratio:.3f}")
            weights = {
                key: int(res.consensus[s * len(res.encoders) + e])
                for e, key in enumerate(res.encoders)
                if not res.outliers[s * len(res.encoders) + e]
                and res.consensus[s * len(res.encoders) + e] > 0
            }
            keys = sorted(weights)
            if len(keys) > vec.size:
                continue
            basis = np.stack([fulls[(s, k)].astype(np.float64) for k in keys], axis=1)
            coef = np.linalg.lstsq(basis, vec, rcond=None)[0]
            parts = np.abs(coef) * np.linalg.norm(basis, axis=0)
            total = sum(weights.values())
            for i, k in enumerate(keys):
                if kinds.get(k.hex()) != "honest":
                    share = parts[i] / parts.sum()
                    print(
                        f"    {kinds.get(k.hex(), '?')} {k.hex()[:8]}: weight share "
                        f"{weights[k] / total:.3f}, share of the output {share:.3f}"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
