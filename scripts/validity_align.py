"""Alignment variants for an outsider model (issue 14, step 1 of the second study).

    python scripts/validity_align.py [--cache DIR] [--json PATH] [--no-scores]

Why does all-mpnet-base-v2, aligned into the network's space, lose supervised quality and
score low? This measures linear maps from its native 768-d space into the network's 1,024-d
space, each fitted on public data only, on:

- the held-out cosine to the certified weighted embedding on a FIXED test set: the last 60 of
  300 certified rounds (rounds 1240-1299 of the study's certified past, 240 shards; the honest
  pool scored and certified as validators would, ``validity.certified``);
- the supervised quality of the mapped model on every side of the validity study
  (``validity.study_sides``: held-out sets, word similarity, tuning sets), with
  its paired bootstrap difference to MiniLM (``honest-0``) and to all-mpnet-base-v2 behind the
  plain projection (its own geometry);
- its network score (8 rounds, ``validity.network_scores``) in a pool of the 6 MiniLM honest
  encoders, the fine-tune and the graded family (no cheats), and the fraction of its cells cut.

Fits (every one linear without intercept, so the composition identity survives; all
closed-form or fixed-seed, deterministic):

- ``ridge``: the fit ``dlnet align`` keeps today (``aligned.fit_method``: alpha from 5 values
  on the last fifth of the training pairs);
- ``ridge-cv``: alpha from a 5-fold contiguous cross-validation over 10^-6 .. 10^2 (cosine);
- ``ridge-unit-cv``: the same on unit-length rows (every pair weighs the same);
- ``procrustes``: scaled orthogonal Procrustes into the 1,024 dims (``aligned.fit_procrustes``);
- ``procrustes-384``: Procrustes into the 384 coordinates of the subspace the network's space
  spans (the default model behind the projection P: targets mapped by pinv(P)), then P;
- ``rrr-K``: reduced-rank ridge (ridge-cv's fitted values projected on their top K
  directions);
- ``pcr-K``: ridge-cv on the top K principal components of the outsider's embeddings of the
  data set's texts (label-free, public);
- ``cca``: whitened Procrustes (both sides whitened with covariances of the data set's texts,
  shrunk by 1e-3 of their trace; the 384-d target coordinates as in procrustes-384): a map in
  which every canonical direction counts the same;
- ``distill-*``: targets = the default model's output behind P (``ProjectedModel`` without a
  private map) on the data set's eligible texts, not only the certified shards (the texts of
  the test rounds left out): as many pairs as the data set has texts.

The number of certified pairs is varied by training on the first 320 (100 rounds, the study's
default) or 960 (300 rounds) pairs; the test set is the same for all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validity as v

from dlnet.node.models.aligned import fit_method, fit_procrustes, fit_ridge
from dlnet.protocol.config import DEFAULT_PROJECTION_SEED
from dlnet.protocol.masks import split_units
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.projection import projection_matrix
from dlnet.protocol.scoring import effective_rank

F64 = NDArray[np.float64]
TOTAL_ROUNDS = 300
TEST_ROUNDS = 60
TRAIN_PAIRS = (320, 960)
CV_ALPHAS = tuple(10.0**e for e in np.arange(-6.0, 2.5, 0.5))


def mean_cos(a: F64, b: F64) -> float:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return float(np.mean(np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])))


def unit_rows(x: F64) -> F64:
    out: F64 = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def cv_alpha(x: F64, y: F64, folds: int = 5) -> float:
    """The ridge alpha of CV_ALPHAS with the best mean held-out cosine over contiguous folds."""
    bounds = np.linspace(0, len(x), folds + 1).astype(int)

    def score(alpha: float) -> float:
        got = []
        for lo, hi in itertools.pairwise(bounds):
            keep = np.r_[0:lo, hi : len(x)]
            got.append(mean_cos(x[lo:hi] @ fit_ridge(x[keep], y[keep], alpha), y[lo:hi]))
        return float(np.mean(got))

    return max(CV_ALPHAS, key=score)


def ridge_cv(x: F64, y: F64) -> F64:
    return fit_ridge(x, y, cv_alpha(x, y))


def inv_sqrt(c: F64, shrink: float = 1e-3) -> tuple[F64, F64]:
    """C^-1/2 and C^1/2 of a covariance shrunk towards shrink * trace / d * I."""
    d = c.shape[0]
    vals, vecs = np.linalg.eigh(c + shrink * float(np.trace(c)) / d * np.eye(d))
    vals = np.maximum(vals, 1e-300)
    return (vecs / np.sqrt(vals)) @ vecs.T, (vecs * np.sqrt(vals)) @ vecs.T


class Fits:
    """The fits, given the public unlabelled data: the outsider's and the default model's
    native embeddings of the data set's texts (``corpus_x``, ``corpus_z``) and P."""

    def __init__(self, corpus_x: F64, corpus_z: F64, p: F64) -> None:
        self.p = p
        self.p_pinv = np.linalg.pinv(p)
        self.corpus_x = corpus_x
        self.corpus_z = corpus_z
        cx = np.cov(corpus_x, rowvar=False)
        self.x_mean_pcs = np.linalg.eigh(cx)[1][:, ::-1]
        self.wx, _ = inv_sqrt(cx)
        self.wz, self.wz_back = inv_sqrt(np.cov(corpus_z, rowvar=False))

    def all(self) -> dict[str, Callable[[F64, F64], F64]]:
        out: dict[str, Callable[[F64, F64], F64]] = {
            "ridge": lambda x, y: fit_method("ridge", x, y),
            "ridge-cv": ridge_cv,
            "ridge-unit-cv": lambda x, y: ridge_cv(unit_rows(x), unit_rows(y)),
            "procrustes": fit_procrustes,
            "procrustes-384": lambda x, y: fit_procrustes(x, y @ self.p_pinv) @ self.p,
            "cca": self.cca,
        }
        for k in (64, 128, 256):
            out[f"rrr-{k}"] = lambda x, y, k=k: self.rrr(x, y, k)
        for k in (128, 256):
            out[f"pcr-{k}"] = lambda x, y, k=k: self.pcr(x, y, k)
        return out

    def rrr(self, x: F64, y: F64, k: int) -> F64:
        w = ridge_cv(x, y)
        vt = np.linalg.svd(x @ w, full_matrices=False)[2][:k]
        out: F64 = w @ vt.T @ vt
        return out

    def pcr(self, x: F64, y: F64, k: int) -> F64:
        basis = self.x_mean_pcs[:, :k]
        out: F64 = basis @ ridge_cv(x @ basis, y)
        return out

    def cca(self, x: F64, y: F64) -> F64:
        z = y @ self.p_pinv
        inner = fit_procrustes(x @ self.wx, z @ self.wz)
        out: F64 = self.wx @ inner @ self.wz_back @ self.p
        return out


def embed_all(native: v.NativeCache, texts: list[str]) -> F64:
    return np.asarray(native.embed_native(texts), dtype=np.float64)


def quality_row(
    name: str, embed: v.Embed, sides: dict[str, v.Side], refs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Quality of ``embed`` on each side, and its paired bootstrap difference to each ref."""
    enc = v.Encoder(name, "outsider", embed)
    row: dict[str, Any] = {}
    for side_name, sd in sides.items():
        q = v.quality(enc, sd)
        row[side_name] = q["quality"]
        boot = np.asarray(q["quality_boot"])
        for ref_name, ref in refs.items():
            diff = q["quality"] - ref[side_name]["quality"]
            se = float(np.std(boot - np.asarray(ref[side_name]["quality_boot"])))
            row[f"{side_name} vs {ref_name}"] = (diff, se)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "dlnet" / "validity"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-scores", action="store_true", help="skip the network scores")
    args = ap.parse_args()
    began = time.monotonic()
    cache = Path(args.cache)
    params = ScoringParams()
    items, encs, caches, natives = v.study_inputs(cache)
    mpnet = next(n for n in natives if n.name == "mpnet")
    pool = [e for e in encs if e.group == "honest"]
    first = v.ALIGN_FIRST_ROUND
    texts, targets = v.certified(pool, items, range(first, first + TOTAL_ROUNDS), params)
    y = targets.astype(np.float64)
    x = embed_all(mpnet, texts)
    test = slice(len(texts) - 4 * TEST_ROUNDS, len(texts))
    test_texts = set(texts[test])
    p = projection_matrix(DEFAULT_PROJECTION_SEED, 384, v.DIM).astype(np.float64)
    corpus = sorted({" ".join(u) for t in items if len(u := split_units(t)) >= 2})
    train_corpus = [t for t in corpus if t not in test_texts]
    fits = Fits(embed_all(mpnet, corpus), embed_all(caches[0], corpus), p)
    distill_x = embed_all(mpnet, train_corpus)
    distill_y = embed_all(caches[0], train_corpus) @ p
    print(
        f"{len(texts)} certified pairs, test {len(test_texts)} texts; "
        f"{len(train_corpus)} data-set texts for distillation",
        flush=True,
    )

    sides = v.study_sides(small=False)
    by = {e.name: e for e in encs}
    projected = v.Encoder("mpnet-projected", "outsider", v.projected(mpnet))
    refs = {
        "minilm": {s: v.quality(by["honest-0"], sd) for s, sd in sides.items()},
        "mpnet-own": {s: v.quality(projected, sd) for s, sd in sides.items()},
    }
    rows: list[dict[str, Any]] = []
    for ref_name, ref in refs.items():
        rows.append(
            {"fit": f"({ref_name})", **{s: ref[s]["quality"] for s in sides}, "heldout_cos": None}
        )
    print(json.dumps(rows), flush=True)

    pool_family = [e for e in encs if e.group in ("honest", "graded")]
    variants: list[tuple[str, int, Callable[[], F64]]] = []
    for n in TRAIN_PAIRS:
        for name, fit in fits.all().items():
            variants.append((name, n, lambda fit=fit, n=n: fit(x[:n], y[:n])))
    for name, fit in (
        ("distill-ridge-cv", ridge_cv),
        ("distill-procrustes-384", fits.all()["procrustes-384"]),
        ("distill-cca", fits.cca),
    ):
        variants.append((name, 0, lambda fit=fit: fit(distill_x, distill_y)))
    for name, n, make in variants:
        t0 = time.monotonic()
        w = make()
        fit_s = time.monotonic() - t0

        def embed(t: list[str], w: F64 = w) -> NDArray[np.float32]:
            return np.asarray(mpnet.embed_native(t) @ w, dtype=np.float32)

        row: dict[str, Any] = {
            "fit": name,
            "pairs": n,
            "heldout_cos": mean_cos(x[test] @ w, y[test]),
            "fit_seconds": fit_s,
            "mapped_erank": effective_rank(x[test] @ w),
            **quality_row(name, embed, sides, refs),
        }
        if not args.no_scores:
            enc = v.Encoder("mpnet-mapped", "outsider", embed)
            net = v.network_scores([*pool_family, enc], items, 8, params)
            honest = [net[e.name]["score"] for e in pool_family if e.name.startswith("honest")]
            row |= {
                "score": net["mpnet-mapped"]["score"],
                "cut": net["mpnet-mapped"]["cut"],
                "comp": net["mpnet-mapped"]["comp"],
                "honest_scores": (min(honest), max(honest)),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for c in [*caches, *natives]:
        c.save()
    print(f"{time.monotonic() - began:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
