"""Per-message costs of the protocol code against their floors, measured in one run.

    python scripts/bench_protocol.py [--seconds 1.0]

Floors: a raw Ed25519 verify (`cryptography`), a raw msgpack unpack of the same bytes. Rows:
strict decode of an Embedding (decode + canonical check + finiteness + signature), signing an
Embedding, and scoring one round of the default testnet shape (13 encoders, 4 shards, 5 slots,
dim 1024). Prints a markdown table with operations/s and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import msgpack
import numpy as np

from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey, verify
from dlnet.protocol.scoring import ScoringParams, score_round
from dlnet.protocol.wire import DOMAINS, Kind, decode, encode, make_embedding, signed_payload


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    key = SigningKey.generate()
    cfg = default_config([ValidatorEntry(key.public_key, 1)], 0, dataset_sha256=bytes(32))
    vec = np.random.default_rng(0).standard_normal(cfg.dim).astype(np.float32)
    emb = make_embedding(key, cfg.network_id, 1, 0, 0, os.urandom(16), vec)
    data = encode(emb)
    payload = signed_payload(emb)
    domain = DOMAINS[Kind.EMBEDDING]

    rng = np.random.default_rng(1)
    encoders = sorted(os.urandom(32) for _ in range(13))
    base = rng.standard_normal((4, cfg.slots_per_shard, cfg.dim))
    shards = [
        {
            e: (base[s] + 0.1 * rng.standard_normal(base[s].shape)).astype(np.float32)
            for e in encoders
        }
        for s in range(4)
    ]
    counts = [(20, 10, 10, 10, 10)] * 4

    verify_rate = rate(lambda: verify(key.public_key, domain, payload, emb.signature), args.seconds)
    unpack_rate = rate(lambda: msgpack.unpackb(data), args.seconds)
    rows = [
        ("raw Ed25519 verify (floor)", verify_rate, verify_rate),
        (
            "strict decode + verify of an Embedding",
            rate(lambda: decode(data, cfg), args.seconds),
            verify_rate,
        ),
        (
            "sign an Embedding",
            rate(
                lambda: make_embedding(key, cfg.network_id, 1, 0, 0, b"\0" * 16, vec), args.seconds
            ),
            verify_rate,
        ),
        ("raw msgpack unpack of an Embedding (floor)", unpack_rate, unpack_rate),
        (
            "score one testnet round (13 enc, 4 shards)",
            rate(lambda: score_round(ScoringParams(), shards, counts, encoders), args.seconds),
            verify_rate,
        ),
    ]
    print(f"Embedding message: {len(data)} bytes\n")
    print("| operation | per second | ratio to its floor |")
    print("| --- | ---: | ---: |")
    for name, r, floor in rows:
        print(f"| {name} | {r:,.1f} | {r / floor:.3f} |")


if __name__ == "__main__":
    main()
