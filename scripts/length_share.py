"""Can length buy weight? The share of a scaled honest encoder in the weighted embedding.

    python scripts/length_share.py [--items N]

Six honest encoders (the testnet's honest kind, seeds 0-5) and one more honest encoder scaled by
7 and by 1e6 (the scaled kind, seed 6) embed the first N items of the shipped corpus; all seven
get the same weight. For each item it prints the scaled encoder's weight share, its share of the
output (the least-squares decomposition out = sum_j a_j f_j, share_i = |a_i| ||f_i|| /
sum_j |a_j| ||f_j||) under the former plain mean ``sum w F / sum w`` and under
``scoring.weighted_embedding``, the output's norm against the honest median norm, and its cosine
to the honest encoders' mean.
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray

from dlnet.data import shipped_path
from dlnet.node.models.kinds import honest, scaled
from dlnet.protocol.config import DEFAULT_PROJECTION_SEED
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.scoring import weighted_embedding

DIM = 1024


def share(out: NDArray[np.floating], fulls: list[NDArray[np.float32]], i: int) -> float:
    basis = np.stack([f.astype(np.float64) for f in fulls], axis=1)
    coef = np.linalg.lstsq(basis, out.astype(np.float64), rcond=None)[0]
    parts = np.abs(coef) * np.linalg.norm(basis, axis=0)
    return float(parts[i] / parts.sum())


def cosine(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    x, y = a.astype(np.float64), b.astype(np.float64)
    return float(np.sum(x * y) / np.linalg.norm(x) / np.linalg.norm(y))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=4)
    args = ap.parse_args()
    lines = shipped_path("corpus.txt").read_text().splitlines()
    texts = [t for t in lines if t.strip()][: args.items]
    seed = DEFAULT_PROJECTION_SEED
    honest_out = [honest(DIM, seed, seed=i).embed(texts) for i in range(6)]
    dup = ScoringParams().duplicate_cos
    for factor in (7.0, 1e6):
        big = scaled(DIM, seed, seed=6, factor=factor).embed(texts)
        for t in range(len(texts)):
            fulls = [h[t] for h in honest_out] + [big[t]]
            weights = [60000] * len(fulls)
            new = weighted_embedding(weights, fulls, duplicate_cos=dup)
            acc = np.zeros(DIM)
            for w, f in zip(weights, fulls, strict=True):
                acc += np.float64(w) * f.astype(np.float64)
            old = acc / sum(weights)
            honest_norm = float(np.median([np.linalg.norm(f) for f in fulls[:6]]))
            mean = np.mean([f.astype(np.float64) for f in fulls[:6]], axis=0)
            print(
                f"x{factor:g} item {t}: weight share {1 / len(fulls):.3f}; "
                f"output share: plain mean {share(old, fulls, 6):.3f}, "
                f"weighted_embedding {share(new, fulls, 6):.3f}; "
                f"norm / honest median {np.linalg.norm(new) / honest_norm:.3f}; "
                f"cosine to the honest mean {cosine(new, mean):.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
