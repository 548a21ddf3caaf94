"""A paper model of one round at scale (default 1,000 encoders x 100 validators, one machine
per node): bytes and CPU per node and role, and which node saturates first.

    python scripts/model_scale.py                          # the inputs below
    python scripts/model_scale.py --bench-json bench-scale-out/rows.json --measure-scoring

The design modelled (issue 11): commits, attestations and votes on gossip (every node
subscribes, each delivery arrives ``dup`` times); each encoder pushes its round's reveals as
ONE batch to the ``outlets`` validators it is connected to; every validator fetches the
reveals it lacks from other validators by commitment, in batches of at most 3 MiB, and serves
as much as it fetches (on average). Pure arithmetic over per-operation costs:

* ``verify_ms``: one Ed25519 verify (from ``--bench-json``, scripts/bench_scale.py, else
  docs/FINDINGS.md's 0.18 ms); every embedding is verified once by each validator;
* ``decode_ms``: strict decode beyond the verify (docs/BENCHMARKS.md: 0.15 of a verify);
* ``stream_ms``: CPU of one libp2p request/response stream (open, negotiate, close), each end;
* ``kb_ms``: transport CPU per KB moved in a batch (noise + yamux + copies), each end;
* ``gossip_ms``: CPU of one gossip delivery (py-libp2p today, docs/FINDINGS.md: ~5.5 ms);
* ``store_ms``: one SQLite row written (batched);
* scoring: ``score_a * E + score_b * E^2`` seconds per round (LOF over every slot is
  quadratic in the encoders), fitted on this machine (``--measure-scoring`` refits it).

The model leaves out the encoders' own embedding work (their model's business) and the
finality messages' tiny payloads beyond their gossip deliveries.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

KB = 1000.0
MB = 1000.0 * KB
BATCH = 3 * 2**20


@dataclass(frozen=True)
class Inputs:
    encoders: int = 1000
    validators: int = 100
    outlets: int = 2
    """Validators each encoder is connected to and pushes its reveals to."""
    round_seconds: float = 60.0
    cores: int = 2
    shards: int = 4
    slots: int = 5
    embedding_bytes: int = 4257
    dup: float = 2.0
    """Copies of each gossip message a node receives (1.6-2.9 measured, issue 11)."""
    verify_ms: float = 0.18
    decode_ms: float = 0.03
    stream_ms: float = 3.0
    kb_ms: float = 0.05
    gossip_ms: float = 5.5
    store_ms: float = 0.02
    score_a: float = 0.0012
    score_b: float = 7.0e-6

    @property
    def per_encoder(self) -> int:
        return self.shards * self.slots

    def commit_bytes(self) -> float:
        return 200 + 32 * self.per_encoder

    def attestation_bytes(self) -> float:
        # encoder keys, u16 score and outlier flag per (shard, encoder), header and signature
        return 200 + self.encoders * (32 + 3 * self.shards)

    def certificate_bytes(self) -> float:
        n = self.encoders
        return 300 + n * (32 + 3 * self.shards + 2) + self.shards * 4096 + 100 * self.validators


@dataclass
class Load:
    role: str
    ingress: float = 0.0  # bytes per round
    egress: float = 0.0
    cpu: dict[str, float] | None = None  # seconds per round by item

    def add(self, item: str, seconds: float) -> None:
        self.cpu = self.cpu or {}
        self.cpu[item] = self.cpu.get(item, 0.0) + seconds

    @property
    def cpu_total(self) -> float:
        return sum((self.cpu or {}).values())


def gossip(load: Load, x: Inputs, messages: float, size: float, degree: float = 3.0) -> None:
    """A node receiving ``messages`` gossip messages of ``size`` bytes ``dup`` times each and
    forwarding each to about ``degree - 1`` mesh peers."""
    got = messages * x.dup
    load.ingress += got * size
    load.egress += messages * (degree - 1) * size
    load.add("gossip deliveries", got * (x.gossip_ms + size / KB * x.kb_ms) / 1000)


def model(x: Inputs) -> list[Load]:
    e, v = x.encoders, x.validators
    reveal_batch = x.per_encoder * x.embedding_bytes
    shared = [
        (e, x.commit_bytes()),  # commits
        (v, x.attestation_bytes()),  # attestations
        (2 * v, 200.0),  # prevotes and precommits
    ]
    # Encoder: its commit and its reveal batch pushed to each outlet.
    enc = Load("encoder")
    for n, size in shared:
        gossip(enc, x, n, size)
    enc.egress += x.outlets * reveal_batch
    enc.add("sign its reveals", x.per_encoder * 0.07 / 1000)
    enc.add("push streams", x.outlets * (x.stream_ms + reveal_batch / KB * x.kb_ms) / 1000)
    # Validator: pushes from the encoders connected to it, the rest fetched from validators,
    # the same amount served to them on average.
    val = Load("validator")
    for n, size in shared:
        gossip(val, x, n, size)
    pushed = e * x.outlets / v  # batches pushed to one validator
    total = e * x.per_encoder  # embeddings a validator must hold
    fetched = total - pushed * x.per_encoder
    fetch_bytes = fetched * x.embedding_bytes
    requests = math.ceil(fetch_bytes / BATCH)
    val.ingress += pushed * reveal_batch + fetch_bytes
    val.egress += fetch_bytes  # served to the others, on average what it fetched
    val.add(
        "transport of reveals (in and out)",
        (pushed * reveal_batch + 2 * fetch_bytes) / KB * x.kb_ms / 1000,
    )
    val.add("streams (pushes, fetches, served)", (pushed + 2 * requests) * x.stream_ms / 1000)
    val.add("verify every embedding once", total * x.verify_ms / 1000)
    val.add("decode", total * x.decode_ms / 1000)
    val.add("store (batched rows)", total * x.store_ms / 1000)
    val.add("score (LOF, quadratic)", x.score_a * e + x.score_b * e * e)
    val.egress += x.certificate_bytes() * 2  # answers to catch-up and API readers, a couple
    # Relay / bootstrap: gossip only.
    relay = Load("relay")
    for n, size in shared:
        gossip(relay, x, n, size)
    return [enc, val, relay]


def measure_scoring() -> tuple[float, float]:
    """Fit ``a * E + b * E^2`` (least squares) to score_round's CPU at E = 100, 200 and 400 on
    this machine, best of 2 each, on one BLAS thread as a validator scores
    (`node.validator.score_on_one_thread`)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from dlnet.protocol.params import ScoringParams
    from dlnet.protocol.scoring import score_round

    rng = np.random.default_rng(1)
    sizes = (100, 200, 400)
    times = []
    for n in sizes:
        encoders = sorted(os.urandom(32) for _ in range(n))
        base = rng.standard_normal((4, 5, 1024))
        shards = [
            {
                k: (base[s] + 0.1 * rng.standard_normal(base[s].shape)).astype(np.float32)
                for k in encoders
            }
            for s in range(4)
        ]
        best = math.inf
        for _ in range(2):
            with threadpool_limits(limits=1):
                began = time.process_time()
                score_round(ScoringParams(), shards, [(20, 10, 10, 10, 10)] * 4, tuple(encoders))
                best = min(best, time.process_time() - began)
        times.append(best)
    e = np.array(sizes, dtype=np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([e, e * e], axis=1), np.array(times), rcond=None)
    return float(a), float(b)


def render(x: Inputs, loads: list[Load]) -> str:
    budget = x.round_seconds * x.cores
    lines = [
        f"{x.encoders} encoders x {x.validators} validators, each encoder pushing to "
        f"{x.outlets} validators; {x.round_seconds:.0f} s rounds; {x.cores} cores per node; "
        f"verify {x.verify_ms} ms, stream {x.stream_ms} ms, {x.kb_ms} ms/KB, gossip delivery "
        f"{x.gossip_ms} ms",
        "",
        "| role | in per round | out per round | CPU per round | share of the node | "
        "largest CPU items |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for load in loads:
        items = sorted((load.cpu or {}).items(), key=lambda kv: -kv[1])[:3]
        lines.append(
            f"| {load.role} | {load.ingress / MB:.1f} MB | {load.egress / MB:.1f} MB "
            f"| {load.cpu_total:.1f} s | {100 * load.cpu_total / budget:.0f} % "
            f"| {', '.join(f'{k} {s:.1f} s' for k, s in items)} |"
        )
    first = max(loads, key=lambda ld: ld.cpu_total / budget)
    lines += [
        "",
        f"First to saturate: the {first.role} ({first.cpu_total:.0f} s of CPU per "
        f"{x.round_seconds:.0f} s round on {x.cores} cores); bandwidth at most "
        f"{max(ld.ingress for ld in loads) * 8 / x.round_seconds / 1e6:.0f} Mbit/s in.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", type=int, default=Inputs.encoders)
    ap.add_argument("--validators", type=int, default=Inputs.validators)
    ap.add_argument("--outlets", type=int, default=Inputs.outlets)
    ap.add_argument("--round-seconds", type=float, default=Inputs.round_seconds)
    ap.add_argument("--gossip-ms", type=float, default=Inputs.gossip_ms)
    ap.add_argument("--stream-ms", type=float, default=Inputs.stream_ms)
    ap.add_argument("--kb-ms", type=float, default=Inputs.kb_ms)
    ap.add_argument("--bench-json", type=Path, default=None, help="rows of bench_scale.py")
    ap.add_argument("--measure-scoring", action="store_true")
    args = ap.parse_args()
    x = Inputs(
        encoders=args.encoders,
        validators=args.validators,
        outlets=args.outlets,
        round_seconds=args.round_seconds,
        gossip_ms=args.gossip_ms,
        stream_ms=args.stream_ms,
        kb_ms=args.kb_ms,
    )
    if args.bench_json is not None:
        rows = json.loads(args.bench_json.read_text())
        x = replace(x, verify_ms=min(r["verify_ms"] for r in rows))
    if args.measure_scoring:
        a, b = measure_scoring()
        x = replace(x, score_a=a, score_b=b)
    print(render(x, model(x)))


if __name__ == "__main__":
    main()
