"""The inverse-cloze signal and what it costs to fake it (issue 14, fourth study).

    python scripts/validity_ict.py [--cache DIR] [--rounds N] [--json PATH]

The validity study's family (``validity.family`` plus the outsiders aligned on the 100
certified rounds, exactly as ``scripts/validity.py`` builds it) embeds N further rounds (default
60, rounds 1100..; 4 shards x 2 masks each, never used by the other studies). Per encoder:

- ``ict``: inverse-cloze retrieval in the encoder's own space, pooled over the rounds: for each
  mask embedding (the kept units of a text), the reciprocal rank of its own inverse (the hidden
  units: no word in common) among every pooled shard's inverse of the same mask index, by
  cosine; mean over masks and shards. Label-free and not an agreement: it needs no other
  encoder. Ties count against the encoder (a constant output ranks last, not first).
- ``ict_wK``: the same over windows of K rounds (the candidates: the window's shards), averaged
  over the disjoint windows; ``ict_w1`` is what one round shows a validator. How much history
  the signal needs.
- ``ict_cons``: the encoder's mask against the consensus's inverse (and the consensus's mask
  against its inverse), i.e. inverse cloze across spaces: agreement again.
- the network score, the cut fraction and the min-slot consensus cosine of ``score_round`` (the
  validators' code, default ScoringParams) over the same rounds, the pool being the whole family,
  the cheats and the two adversaries below.

Two adversaries that know the round (the shards and masks are public, as is the data set) and
raise ``ict`` without changing the composition residual (their full slot moves by the sum of what
their mask and inverse move, so ``F - A_m - B_m`` and DL are exactly the honest ones):

- ``smooth-t``: every slot of a shard moves by ``t/2 * w * ||F||`` toward the shard's mean
  direction, ``w`` = 2 for the full slot, 1 for masks and inverses (the context of the shard
  leaks into each half);
- ``tag-t``: the same with a random direction per data-set item (seeded by the item's text)
  instead of the shard mean;
- ``leak-t``: the testnet's ``leaky@t`` (``kinds.leak_full``): t x F into every mask and
  inverse, 2t x F into F; DL shrinks by 1 + 2t.

Each adversary runs the honest model behind a private map of its own (not a member of the
honest pool). Rho of each signal with supervised quality over the real models (honest, graded,
outsiders) is reported for every side of ``validity.study_sides``, held-out first.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validity as v

from dlnet.node.models.kinds import leak_full
from dlnet.protocol.consensus import quantise
from dlnet.protocol.masks import ShardTask
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.scoring import score_round

F64 = NDArray[np.float64]
FIRST_ROUND = 1100
SMOOTH = (0.05, 0.1, 0.2)
TAG = (0.2, 0.5)
LEAK = (0.05, 0.15, 0.5)
WINDOWS = (1, 5, 15, 30)
ADVERSARIES = (
    *(("smooth", t) for t in SMOOTH),
    *(("tag", t) for t in TAG),
    *(("leak", t) for t in LEAK),
)
SLOT_WEIGHTS = np.array([2.0, 1.0, 1.0, 1.0, 1.0])
"""How much of the adversary's shift each slot takes (full, mask 0, inverse 0, mask 1, inverse
1): the full slot's shift is the sum of a mask's and its inverse's, so composition holds."""


def units(x: F64) -> F64:
    out: F64 = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


def item_direction(text: str, dim: int) -> F64:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    out: F64 = units(np.random.default_rng(seed).standard_normal(dim))
    return out


def adversary(base: F64, tasks: Sequence[ShardTask], kind: str, t: float) -> F64:
    """(shards, slots, dim) arrays of a ``smooth`` or ``tag`` adversary built on ``base``."""
    out = base.copy()
    for s, task in enumerate(tasks):
        scale = float(np.linalg.norm(base[s, 0]))
        if kind == "leak":
            out[s] = leak_full(base[s].astype(np.float32), t)
            continue
        if kind == "smooth":
            direction = units(np.mean(units(base[s]), axis=0))
        else:
            direction = item_direction(task.texts[0], base.shape[-1])
        out[s] += (t / 2) * scale * SLOT_WEIGHTS[:, None] * direction[None, :]
    return out


def reciprocal_ranks(queries: F64, keys: F64) -> F64:
    """Per query row i, 1 / (1 + the number of keys at least as close as key i, but key i)."""
    sims = units(queries) @ units(keys).T
    own = np.diag(sims)
    ahead = np.sum(sims >= own[:, None], axis=1) - 1
    out: F64 = 1.0 / (1.0 + ahead)
    return out


def ict(x: F64, y: F64 | None = None) -> float:
    """Mean reciprocal rank of each mask's own inverse among every shard's inverse of that mask
    (masks from ``x``, inverses from ``y``, default ``x``); x, y: (shards, slots, dim)."""
    y = x if y is None else y
    masks = (x.shape[1] - 1) // 2
    return float(
        np.mean([reciprocal_ranks(x[:, 2 * m + 1], y[:, 2 * m + 2]) for m in range(masks)])
    )


def windowed(arrays: Sequence[F64], k: int) -> float:
    """``ict`` over each disjoint window of k consecutive rounds' (shards, slots, dim) arrays,
    averaged over the windows."""
    starts = range(0, len(arrays) - k + 1, k)
    return float(np.mean([ict(np.concatenate(arrays[i : i + k])) for i in starts]))


def rho(rows: Sequence[dict[str, Any]], signal: str, side: str) -> float:
    real = [r for r in rows if r["group"] in v.REAL_GROUPS]
    xs = [-math.inf if math.isnan(r[signal]) else r[signal] for r in real]
    return float(spearmanr(xs, [r[side] for r in real]).statistic)


def main() -> int:
    args = v.study_parser(__doc__, 60).parse_args()
    began = time.monotonic()
    params = ScoringParams()
    items, family, caches = v.aligned_family(Path(args.cache), params)
    encs = [e for e in family if e.group not in v.APART]
    bases = {
        f"{kind}-{t}": v.Encoder(f"base-{kind}-{t}", "base", v.projected(caches[0], 200 + i))
        for i, (kind, t) in enumerate(ADVERSARIES)
    }
    names = [e.name for e in encs] + list(bases)
    groups = {e.name: e.group for e in encs} | dict.fromkeys(bases, "adversary")
    keys = {v.key_of(n): n for n in names}
    held: dict[str, list[F64]] = {n: [] for n in names}
    cells: dict[str, dict[str, list[float]]] = {
        n: {"score": [], "cut": [], "cons": []} for n in names
    }
    for r in range(FIRST_ROUND, FIRST_ROUND + args.rounds):
        tasks, shards = v.round_shards([*encs, *bases.values()], items, r)
        for name, base in bases.items():
            kind, t = name.split("-")
            arr = np.stack([shards[s].pop(v.key_of(base.name)) for s in range(len(tasks))])
            made = adversary(arr.astype(np.float64), tasks, kind, float(t)).astype(np.float32)
            for s in range(len(tasks)):
                shards[s][v.key_of(name)] = made[s]
        res = score_round(params, shards, [t.unit_counts for t in tasks], list(keys))
        for i, k in enumerate(res.encoders):
            n = keys[k]
            x = np.stack([shards[s][k] for s in range(len(tasks))]).astype(np.float64)
            held[n].append(x)
            cells[n]["score"] += [quantise(float(x)) / 65535 for x in res.scores[:, i]]
            cells[n]["cut"] += [float(x) for x in res.outliers[:, i]]
            cells[n]["cons"] += [
                float(np.min(row)) for row in res.consensus[:, i, :] if np.all(np.isfinite(row))
            ]
    stacked = {n: np.concatenate(held[n]) for n in names}
    members = [n for n in names if groups[n] in v.REAL_GROUPS and n != "mpnet-projected"]
    sides = v.study_sides(small=False)
    by_name = {e.name: e for e in encs}
    rows = []
    for n in names:
        consensus = np.median(np.stack([units(stacked[m]) for m in members if m != n]), axis=0)
        x = stacked[n]
        finite = bool(np.all(np.isfinite(x))) and float(np.ptp(x)) > 0
        row: dict[str, Any] = {
            "encoder": n,
            "group": groups[n],
            "ict": ict(x) if finite else math.nan,
            **{f"ict_w{k}": windowed(held[n], k) if finite else math.nan for k in WINDOWS},
            "ict_cons": float(np.mean([ict(x, consensus), ict(consensus, x)]))
            if finite
            else math.nan,
            **{m: float(np.mean(xs)) if xs else math.nan for m, xs in cells[n].items()},
        }
        if n in by_name:
            row |= {s: v.quality(by_name[n], sd)["quality"] for s, sd in sides.items()}
        rows.append(row)
    for c in caches:
        c.save()
    signals = ("score", "ict", *(f"ict_w{k}" for k in WINDOWS), "ict_cons")
    print(
        "| encoder | group | network score | cut | min-slot cos | ict | ict per round "
        "| ict vs consensus | " + " | ".join(f"{s} quality" for s in sides) + " |"
    )
    print("| --- | --- |" + " ---: |" * (6 + len(sides)))
    for row in sorted(rows, key=lambda r: -(r["ict"] if not math.isnan(r["ict"]) else -1)):
        q = " | ".join(f"{row[s]:.3f}" if s in row else "" for s in sides)
        print(
            f"| {row['encoder']} | {row['group']} | {row['score']:.4f} | {row['cut']:.2f} "
            f"| {row['cons']:.3f} | {row['ict']:.3f} | {row['ict_w1']:.3f} "
            f"| {row['ict_cons']:.3f} | {q} |"
        )
    print()
    print("| signal | " + " | ".join(f"rho {s}" for s in sides) + " |")
    print("| --- |" + " ---: |" * len(sides))
    summary = {m: {s: rho(rows, m, s) for s in sides} for m in signals}
    for m in signals:
        print(f"| {m} | " + " | ".join(f"{summary[m][s]:.3f}" for s in sides) + " |")
    print(f"\n{len(stacked[names[0]])} shards, {time.monotonic() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rho": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
