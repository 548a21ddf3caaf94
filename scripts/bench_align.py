"""Cost of `dlnet align`'s fit (node/models/aligned.py): seconds per fit, both methods tried
(`fit_map(..., "auto")`: ridge with its alpha search and Procrustes on the first four fifths,
then the kept one refitted on all pairs), for certified pairs of a native width into 1024 dims.

    python scripts/bench_align.py [--repeat N]

Synthetic pairs (a random linear map plus noise); the fit's cost depends only on the shapes.
Embedding the certified texts with the model is the other cost of `dlnet align` (the model's
own speed, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dlnet.node.models.aligned import fit_map

SHAPES = ((400, 384), (400, 768), (1600, 768), (4000, 768))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| pairs | native width | fit (auto), median s | held-out cos ridge / Procrustes |")
    print("| ---: | ---: | ---: | --- |")
    for n, d in SHAPES:
        x = rng.standard_normal((n, d)).astype(np.float32)
        w = rng.standard_normal((d, 1024)) / np.sqrt(d)
        y = (x @ w + 0.5 * rng.standard_normal((n, 1024))).astype(np.float32)
        times = []
        held: dict[str, float] = {}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _, _, held = fit_map(x, y)
            times.append(time.perf_counter() - t0)
        print(
            f"| {n} | {d} | {float(np.median(times)):.2f} | "
            f"{held['ridge']:.3f} / {held['procrustes']:.3f} |"
        )


if __name__ == "__main__":
    main()
