"""The consensus scores a testnet's validator held, per round, from the attestations it stored.

    python scripts/attested_scores.py OUT [--validator validator-0]

OUT is a `dlnet testnet --out` directory (network.toml, report.json, nodes/*/node.sqlite). For
every round with attestations, the κ-median consensus of the attestations the validator stored
(`protocol.consensus.usable_attestations` and `consensus_matrix`, as the round result would
take them) gives each encoder's mean score over the shards and its outlier shards, listed by
kind. Unlike report.json's ranking, which is read from certified results, it also shows rounds
that did not finalise (e.g. a vote split under load).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from dlnet.protocol.config import parse_config
from dlnet.protocol.consensus import consensus_matrix, usable_attestations
from dlnet.protocol.errors import Reject
from dlnet.protocol.result import U16_MAX
from dlnet.protocol.wire import Attestation, decode


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
        for (data,) in db.execute("SELECT data FROM messages WHERE round = ?", (rnd,)):
            try:
                msg = decode(data, cfg)
            except Reject:
                continue
            if isinstance(msg, Attestation):
                held.append(msg)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
