"""Label-free signals beyond agreement (issue 14, step 2 of the second study).

    python scripts/validity_signals.py [--cache DIR] [--rounds N] [--json PATH]

The validity study's family (``validity.family`` plus the outsiders aligned on 100 certified
rounds, exactly as ``scripts/validity.py`` builds it) is scored round by round with
``score_round`` and the default ScoringParams. Besides the network score, every encoder gets
label-free signals computed from what a validator holds in a round (all rounds pooled):

- ``comp``: the composition agreement (no saturation, no cuts; the score's ingredient);
- ``cert_cos``: cosine of its full embedding to the round's certified weighted embedding
  (``round_embeddings`` of the quantised scores): agreement with the certified output;
- ``cert_rsa``: Spearman correlation between its pairwise cosines of the rounds' full
  embeddings and those of the certified weighted embeddings (representational similarity:
  rotation-invariant, so it compares geometry, not coordinates);
- ``erank``: RankMe effective rank of its full embeddings over the rounds;
- ``align`` / ``uniform``: Wang & Isola's alignment (mean squared distance of the unit full
  embedding to its own masks' and inverses' units: the two halves of a text are its positives)
  and uniformity (log mean exp(-2 d^2) over pairs of different shards' units); lower is better
  for both;
- ``retrieval``: the fraction of mask and inverse embeddings whose nearest full embedding
  (cosine, over every shard of the rounds) is their own text's;
- ``dl`` and ``dl_rel`` (DL over the median DL of the shard's ok cells).

Each signal's Spearman rho with supervised quality over the real models (honest, graded,
outsiders) is reported for the tuning side first (where a choice may be made), then for the
held-out side (to confirm, never to choose); and for each signal, whether every cheat's value is
below every real model's that passes the cuts. Then combinations of the score with a signal
(``score * signal / median``), and per-cell score variants that grade by a per-round
geometry agreement (``VARIANTS``), each to be chosen on the tuning side.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validity as v

from dlnet.protocol.consensus import quantise
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.scoring import dl_factor, effective_rank

F64 = NDArray[np.float64]
SIGNALS = (
    "score",
    "comp",
    "cert_cos",
    "cert_rsa",
    "erank",
    "align",
    "uniform",
    "retrieval",
    "dl",
    "dl_rel",
)
LOWER_IS_BETTER = {"align", "uniform", "dl", "dl_rel"}


def units(x: F64) -> F64:
    out: F64 = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return out


def upper(m: F64) -> F64:
    i, j = np.triu_indices(m.shape[0], 1)
    out: F64 = m[i, j]
    return out


RSA_FULL = (0.6, 0.7, 0.8, 0.9)
COMP_FLOOR = (0.1, 0.15)
VARIANTS = tuple(f"rsa{f}-floor{c}" for f in RSA_FULL for c in COMP_FLOOR) + tuple(
    f"gmean-rsa{f}" for f in RSA_FULL
)
"""Per-cell score variants (``variant_cells``): ``rsaF-floorC`` grades a cell that passes
today's cuts by ``min(rsa / F, 1)`` instead of the composition factor and cuts it when its
composition agreement is below C; ``gmean-rsaF`` grades it by the geometric mean of today's
composition factor and ``min(rsa / F, 1)``. Both keep the DL factor. ``pooled-*``: the same
with the encoder's ``cert_rsa`` over all the rounds instead of the round's own geometry
agreement (a per-encoder state a network would have to carry across rounds)."""


def round_rsa(
    res: Any, shards: list[dict[bytes, NDArray[np.float32]]], order: tuple[bytes, ...]
) -> list[float]:
    """Per encoder, the Spearman correlation of its pairwise cosines over the round's (shard,
    slot) vectors with those of the round's consensus vectors (per position, the normalised
    coordinate-wise median of the ok cells' unit vectors; voices and influence ignored): a
    per-round, rotation-invariant geometry agreement a validator could compute. nan if the
    encoder has fewer than 2 ok cells."""
    n_shards = len(shards)
    ok = [[res.status[s][i] == "ok" for i in range(len(order))] for s in range(n_shards)]
    cons = []
    for s in range(n_shards):
        rows = [
            units(np.asarray(shards[s][k], np.float64)) for i, k in enumerate(order) if ok[s][i]
        ]
        cons.append(units(np.median(np.stack(rows), axis=0)) if rows else None)
    out = []
    for i, k in enumerate(order):
        have = [s for s in range(n_shards) if ok[s][i] and cons[s] is not None]
        if len(have) < 2:
            out.append(math.nan)
            continue
        mine = units(np.concatenate([np.asarray(shards[s][k], np.float64) for s in have]))
        ref = np.concatenate([c for s in have if (c := cons[s]) is not None])
        out.append(float(spearmanr(upper(mine @ mine.T), upper(ref @ ref.T)).statistic))
    return out


def variant_cells(params: ScoringParams, res: Any, s: int, i: int, rsa: float) -> dict[str, float]:
    """The score of cell (s, i) under each of VARIANTS (0 where today's scoring cuts it)."""
    if res.status[s][i] != "ok" or res.outliers[s, i] or math.isnan(rsa):
        return dict.fromkeys(VARIANTS, 0.0)
    comp = float(res.composition[s, i])
    dl_grade = dl_factor(params, float(res.dl[s, i]), float(res.median_dl[s]))
    comp_factor = min(max(comp, 0.0) / params.composition_full, 1.0)
    out = {}
    for f in RSA_FULL:
        grade = min(max(rsa, 0.0) / f, 1.0)
        for c in COMP_FLOOR:
            out[f"rsa{f}-floor{c}"] = 0.0 if comp < c else grade * dl_grade
        out[f"gmean-rsa{f}"] = math.sqrt(comp_factor * grade) * dl_grade
    return out


def collect(
    encs: list[v.Encoder], items: list[str], rounds: int, params: ScoringParams
) -> dict[str, dict[str, float]]:
    """Per encoder, every signal of the module docstring (nan where it has no ok cell)."""
    keys = {v.key_of(e.name): e.name for e in encs}
    cells: dict[str, dict[str, list[float]]] = {
        n: {m: [] for m in ("score", "comp", "cert_cos", "dl", "dl_rel")} for n in keys.values()
    }
    slots_of: dict[str, list[F64 | None]] = {n: [] for n in keys.values()}
    certified: list[F64] = []
    scored: list[Any] = []
    for r in range(rounds):
        tasks, shards, res, cert = v.certify_round(encs, items, r, params)
        order = res.encoders
        certified += [np.asarray(c, np.float64) for c in cert]
        scored.append(res)
        rsa = round_rsa(res, shards, order)
        for i, k in enumerate(order):
            for s in range(len(tasks)):
                for name, value in variant_cells(params, res, s, i, rsa[i]).items():
                    cells[keys[k]].setdefault(name, []).append(value)
        for s in range(len(tasks)):
            ok = [i for i in range(len(order)) if res.status[s][i] == "ok"]
            median_dl = float(np.median(res.dl[s, ok])) if ok else math.nan
            for i, k in enumerate(order):
                name = keys[k]
                cells[name]["score"].append(quantise(float(res.scores[s, i])) / 65535)
                x = np.asarray(shards[s][k], np.float64)
                if res.status[s][i] != "ok":
                    slots_of[name].append(None)
                    continue
                slots_of[name].append(x)
                c = cert[s].astype(np.float64)
                if np.any(c):
                    cells[name]["cert_cos"].append(float(units(x[0]) @ units(c)))
                cells[name]["comp"].append(float(res.composition[s, i]))
                cells[name]["dl"].append(float(res.dl[s, i]))
                cells[name]["dl_rel"].append(float(res.dl[s, i]) / median_dl)
    cert_units = units(np.stack(certified))
    out: dict[str, dict[str, float]] = {}
    for name in keys.values():
        row = {m: float(np.mean(xs)) if xs else math.nan for m, xs in cells[name].items()}
        held = [(i, x) for i, x in enumerate(slots_of[name]) if x is not None]
        present = [i for i, _ in held]
        if len(present) >= 2:
            raw = np.stack([x for _, x in held])
            arr = units(raw)
            full = arr[:, 0]
            geom = upper(full @ full.T)
            ref = cert_units[present]
            row["cert_rsa"] = float(spearmanr(geom, upper(ref @ ref.T)).statistic)
            row["erank"] = effective_rank(raw[:, 0])
            halves = arr[:, 1:]
            row["align"] = float(np.mean(np.sum((halves - full[:, None]) ** 2, axis=-1)))
            d2 = 2.0 - 2.0 * geom
            row["uniform"] = float(np.log(np.mean(np.exp(-2.0 * d2))))
            sims = np.einsum("qmd,fd->qmf", halves, full)
            own = np.arange(len(present))[:, None]
            row["retrieval"] = float(np.mean(np.argmax(sims, axis=-1) == own))
        else:
            row |= {m: math.nan for m in ("cert_rsa", "erank", "align", "uniform", "retrieval")}
        pooled: dict[str, list[float]] = {}
        for res in scored:
            i = res.encoders.index(v.key_of(name))
            for s in range(len(res.status)):
                for m, value in variant_cells(params, res, s, i, row["cert_rsa"]).items():
                    pooled.setdefault(f"pooled-{m}", []).append(value)
        row |= {m: float(np.mean(xs)) for m, xs in pooled.items()}
        out[name] = row
    return out


def rho(rows: list[dict[str, Any]], signal: str, qkey: str) -> float:
    """Spearman rho of a signal (sign-flipped when lower is better; nan = worst) with quality
    over the real models."""
    real = [r for r in rows if r["group"] in v.REAL_GROUPS]
    sign = -1.0 if signal in LOWER_IS_BETTER else 1.0
    xs = [-math.inf if math.isnan(r[signal]) else sign * r[signal] for r in real]
    return float(spearmanr(xs, [r[qkey] for r in real]).statistic)


def cheats_below(rows: list[dict[str, Any]], signal: str) -> tuple[float, float]:
    """The highest cheat value and the lowest value of a real model that passes the cuts
    (network score > 0), both in the better-is-higher orientation (nan = -inf)."""
    sign = -1.0 if signal in LOWER_IS_BETTER else 1.0

    def val(r: dict[str, Any]) -> float:
        return -math.inf if math.isnan(r[signal]) else sign * r[signal]

    cheat = max(val(r) for r in rows if r["group"] == "cheat")
    real = min(val(r) for r in rows if r["group"] in v.REAL_GROUPS and r["score"] > 0)
    return cheat, real


def combined(rows: list[dict[str, Any]], signal: str) -> list[dict[str, Any]]:
    """Rows with ``score`` replaced by ``score * (signal / median signal over the real models
    that pass)`` (inverse ratio when lower is better; a cut or gated encoder keeps 0)."""
    passing = [r[signal] for r in rows if r["score"] > 0 and not math.isnan(r[signal])]
    med = float(np.median(passing))
    out = []
    for r in rows:
        x = r[signal]
        if r["score"] <= 0 or math.isnan(x) or x <= 0 or med <= 0:
            factor = 0.0 if r["score"] <= 0 else 1.0
        else:
            factor = med / x if signal in LOWER_IS_BETTER else x / med
        out.append({**r, "score": r["score"] * factor})
    return out


def table_row(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``' "score" against quality, printed as a markdown row: rho on each side, the
    highest cheat and the lowest real model that passes the cuts."""
    cheat, real = cheats_below(rows, "score")
    t = {
        "tuning": rho(rows, "score", "tuning"),
        "heldout": rho(rows, "score", "heldout"),
        "max_cheat": cheat,
        "min_passing_real": real,
        "scores": {r["encoder"]: r["score"] for r in rows},
    }
    print(f"| {name} | {t['tuning']:.3f} | {t['heldout']:.3f} | {cheat:.4f} | {real:.4f} |")
    return t


def main() -> int:
    args = v.study_parser(__doc__, 8).parse_args()
    began = time.monotonic()
    params = ScoringParams()
    items, encs, caches = v.aligned_family(Path(args.cache), params)
    signals = collect(encs, items, args.rounds, params)
    sides = v.study_sides(small=False)
    rows = [
        {
            "encoder": e.name,
            "group": e.group,
            **signals[e.name],
            **{s: v.quality(e, sd)["quality"] for s, sd in sides.items()},
        }
        for e in encs
        if e.group not in v.APART
    ]
    for c in caches:
        c.save()
    print("| encoder | group | " + " | ".join(SIGNALS) + " | tuning q | held-out q |")
    print("| --- | --- |" + " ---: |" * (len(SIGNALS) + 2))
    for r in sorted(rows, key=lambda r: -r["score"]):
        vals = " | ".join(f"{r[m]:.3f}" for m in SIGNALS)
        print(
            f"| {r['encoder']} | {r['group']} | {vals} | {r['tuning']:.3f} | {r['heldout']:.3f} |"
        )
    print()
    print("| signal | rho tuning | rho held-out | highest cheat | lowest passing real |")
    print("| --- | ---: | ---: | ---: | ---: |")
    summary: dict[str, Any] = {}
    for m in SIGNALS:
        cheat, real = cheats_below(rows, m)
        summary[m] = {
            "tuning": rho(rows, m, "tuning"),
            "heldout": rho(rows, m, "heldout"),
            "max_cheat": cheat,
            "min_passing_real": real,
        }
        t = summary[m]
        print(f"| {m} | {t['tuning']:.3f} | {t['heldout']:.3f} | {cheat:.3f} | {real:.3f} |")
    print()
    print(
        "| score x signal / median | rho tuning | rho held-out | highest cheat "
        "| lowest passing real |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    combos = {m: table_row(m, combined(rows, m)) for m in SIGNALS[1:]}
    print()
    print("| score variant | rho tuning | rho held-out | highest cheat | lowest passing real |")
    print("| --- | ---: | ---: | ---: | ---: |")
    variants = {
        m: table_row(m, [{**r, "score": r[m]} for r in rows])
        for m in ("score", *VARIANTS, *(f"pooled-{m}" for m in VARIANTS))
    }
    print(f"{time.monotonic() - began:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "signals": summary, "combined": combos, "variants": variants},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
