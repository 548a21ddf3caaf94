"""Per-message costs of the protocol code against their floors, measured in one run.

    python scripts/bench_protocol.py [--seconds 1.0] [--after-torch]
    python scripts/bench_protocol.py --scoring-cpu [--runs 5]

Floors: a raw Ed25519 verify (`cryptography`), a raw msgpack unpack of the same bytes. Rows:
strict decode of an Embedding (decode + canonical check + finiteness + signature), receiving
one Embedding of a reveal push (a validator's whole per-embedding cost: parse, admission, store,
in pushes of 20), signing an Embedding, and scoring one round of the testnet shape (4 shards,
5 slots, dim 1024) at 13 and 100 encoders, and at 13 on one BLAS thread as a validator runs
it (`--after-torch` first runs torch, as an encoder in the same process would), and grading one
encoder on a probe of the default size against a float matmul of its halves (its floor). Prints a
markdown table with operations/s and the ratio to the floor. ``--scoring-cpu`` instead prints
the CPU seconds (``time.process_time``, best of ``--runs``) of one such round's scoring on one
BLAS thread at 13, 40 and 100 encoders.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

from dlnet.node.ingest import Ingest
from dlnet.node.reveals import receive
from dlnet.node.store import Store
from dlnet.node.validator import score_on_one_thread
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey, verify
from dlnet.protocol.params import RegistrationParams, ScoringParams
from dlnet.protocol.probes import pairing, probe_grade
from dlnet.protocol.rounds import round_times
from dlnet.protocol.scoring import score_round
from dlnet.protocol.wire import DOMAINS, Kind, decode, encode, make_embedding, signed_payload


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n / elapsed


def push_rate(cfg: NetworkConfig, seconds: float) -> float:
    """Embeddings per second a validator takes in by reveal push (20 per push, each new)."""
    rng = np.random.default_rng(2)
    pushes: list[bytes] = []
    for _ in range(max(10, int(seconds * 150))):
        key = SigningKey.generate()
        batch = [
            encode(make_embedding(key, cfg.network_id, 1, i // 5, i % 5, os.urandom(16), v))
            for i, v in enumerate(rng.standard_normal((20, cfg.dim)).astype(np.float32))
        ]
        pushes.append(msgpack.packb(batch, use_bin_type=True))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "node.sqlite")
        at = round_times(cfg, 1).commit_deadline + 3
        ingest = Ingest(cfg, store, lambda: at)
        start = time.perf_counter()
        for body in pushes:
            receive(ingest, body)
        elapsed = time.perf_counter() - start
        store.close()
    return 20 * len(pushes) / elapsed


def round_shards(cfg: NetworkConfig, n: int) -> tuple[list[dict[bytes, np.ndarray]], list[bytes]]:
    rng = np.random.default_rng(1)
    encoders = sorted(os.urandom(32) for _ in range(n))
    base = rng.standard_normal((4, cfg.slots_per_shard, cfg.dim))
    shards = [
        {
            e: (base[s] + 0.1 * rng.standard_normal(base[s].shape)).astype(np.float32)
            for e in encoders
        }
        for s in range(4)
    ]
    return shards, encoders


def scoring_cpu(cfg: NetworkConfig, runs: int) -> None:
    """CPU seconds of one round's scoring on one BLAS thread, as a validator runs it."""
    counts = [(20, 10, 10, 10, 10)] * 4
    print(f"| encoders | CPU s per round (best of {runs}) |")
    print("| ---: | ---: |")
    for n in (13, 40, 100):
        shards, keys = round_shards(cfg, n)
        score_on_one_thread(ScoringParams(), shards, counts, keys)  # scikit-learn imported
        best = math.inf
        for _ in range(runs):
            start = time.process_time()
            score_on_one_thread(ScoringParams(), shards, counts, keys)
            best = min(best, time.process_time() - start)
        print(f"| {n} | {best:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument(
        "--after-torch",
        action="store_true",
        help="run a torch matmul first, as an encoder beside the validator does: torch's "
        "thread pools then slow BLAS down (the one-thread rows show the validator's way)",
    )
    ap.add_argument("--scoring-cpu", action="store_true", help="only the scoring CPU table")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.after_torch:
        import torch

        x = torch.randn(256, 384)
        float((x @ x.T).sum())
    key = SigningKey.generate()
    cfg = default_config([ValidatorEntry(key.public_key, 1)], 0, dataset_sha256=bytes(32))
    if args.scoring_cpu:
        scoring_cpu(cfg, args.runs)
        return
    vec = np.random.default_rng(0).standard_normal(cfg.dim).astype(np.float32)
    emb = make_embedding(key, cfg.network_id, 1, 0, 0, os.urandom(16), vec)
    data = encode(emb)
    payload = signed_payload(emb)
    domain = DOMAINS[Kind.EMBEDDING]

    counts = [(20, 10, 10, 10, 10)] * 4
    pushed = default_config(
        [ValidatorEntry(key.public_key, 1)],
        0,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),
    )
    small, small_keys = round_shards(cfg, 13)
    large, large_keys = round_shards(cfg, 100)

    verify_rate = rate(lambda: verify(key.public_key, domain, payload, emb.signature), args.seconds)
    pairs = pairing(bytes(32), cfg.scoring.probe_texts)
    halves = list(np.random.default_rng(3).standard_normal((2 * len(pairs), cfg.dim)))
    stacked = np.stack(halves)
    matmul_rate = rate(lambda: stacked @ stacked.T, args.seconds)
    unpack_rate = rate(lambda: msgpack.unpackb(data), args.seconds)
    rows = [
        ("raw Ed25519 verify (floor)", verify_rate, verify_rate),
        (
            "strict decode + verify of an Embedding",
            rate(lambda: decode(data, cfg), args.seconds),
            verify_rate,
        ),
        ("receive an Embedding by reveal push", push_rate(pushed, args.seconds), verify_rate),
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
            rate(lambda: score_round(ScoringParams(), small, counts, small_keys), args.seconds),
            verify_rate,
        ),
        (
            "score one testnet round on one BLAS thread (as a validator does)",
            rate(
                lambda: score_on_one_thread(ScoringParams(), small, counts, small_keys),
                args.seconds,
            ),
            verify_rate,
        ),
        (
            "score one round of 100 encoders (4 shards)",
            rate(lambda: score_round(ScoringParams(), large, counts, large_keys), args.seconds),
            verify_rate,
        ),
        (
            "score one round of 100 encoders on one BLAS thread",
            rate(
                lambda: score_on_one_thread(ScoringParams(), large, counts, large_keys),
                args.seconds,
            ),
            verify_rate,
        ),
        (
            "grade one encoder on a probe (16 texts, dim 1024)",
            rate(lambda: probe_grade(pairs, halves), args.seconds),
            verify_rate,
        ),
        (
            "float64 matmul of the probe's halves (floor of the grade)",
            matmul_rate,
            matmul_rate,
        ),
    ]
    print(f"Embedding message: {len(data)} bytes\n")
    print("| operation | per second | ratio to its floor |")
    print("| --- | ---: | ---: |")
    for name, r, floor in rows:
        print(f"| {name} | {r:,.1f} | {r / floor:.3f} |")


if __name__ == "__main__":
    main()
