"""Benchmark the default model: load time and embedding throughput on the shipped corpus.

    python scripts/bench_model.py [--threads 1] [--texts 200] [--batch-size 32]

Texts are round-shaped: corpus items, and for each a mask and an inverse (half the words), so
lengths match what an encoder embeds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import time
from dataclasses import dataclass

from dlnet.data import shipped_path
from dlnet.node.models import load_model
from dlnet.protocol.dataset import parse_dataset
from dlnet.protocol.masks import split_units


@dataclass(frozen=True)
class BenchNetwork:
    """The two config fields a model needs (testnet defaults)."""

    dim: int = 1024
    projection_seed: bytes = bytes(32)


def round_texts(count: int, seed: int = 0) -> list[str]:
    items = parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines", "text")
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < count:
        units = split_units(rng.choice(items))
        hidden = set(rng.sample(range(len(units)), len(units) // 2))
        texts += [
            " ".join(units),
            " ".join(u for i, u in enumerate(units) if i not in hidden),
            " ".join(u for i, u in enumerate(units) if i in hidden),
        ]
    return texts[:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()  # torch and transformers are imported inside: counted as loading
    model = load_model(
        None, BenchNetwork(), {"threads": str(args.threads), "batch_size": str(args.batch_size)}
    )
    load_s = time.perf_counter() - t0

    texts = round_texts(args.texts)
    t1 = time.perf_counter()
    model.embed(texts[:8])  # first call: lazy initialisation inside torch
    first_s = time.perf_counter() - t1
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.embed(texts)
        runs.append(time.perf_counter() - t)
    best = min(runs)
    print(
        json.dumps(
            {
                "model": "dlnet.node.models.minilm:default",
                "dim": model.dim,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "load_seconds": round(load_s, 2),
                "first_call_seconds": round(first_s, 3),
                "texts": len(texts),
                "mean_words": round(sum(len(t.split()) for t in texts) / len(texts), 1),
                "embed_seconds_best": round(best, 3),
                "texts_per_second": round(len(texts) / best, 1),
                "ms_per_text": round(1000 * best / len(texts), 2),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
