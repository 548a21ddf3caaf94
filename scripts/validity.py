"""Validity study: does the network's label-free score rank encoders by their quality?

    python scripts/validity.py [--small] [--rounds N] [--json PATH] [--markdown PATH]
                               [--set FIELD=VALUE ...]
    python scripts/validity.py --testnet REPORT --quality STUDY_JSON

The second form compares a testnet's ranking (its report.json, run with the graded kinds) with
the supervised quality of the same models measured by a study (its --json output).

A family of encoders of graded quality (honest: the default model behind private perturbations
and its shipped fine-tune; graded: the same model truncated to fewer layers, with random
weights, as static word-piece vectors summed or averaged, and its output with noise added)
plus the known cheats is scored exactly as validators score a round
(protocol.masks.derive_tasks on the shipped corpus, protocol.scoring.score_round over the whole
pool, protocol.consensus.quantise). The network score of an encoder is its mean quantised score
over shards and rounds. Supervised quality is measured on the labelled sets shipped in
data/labelled/: leave-one-out 5-NN accuracy (cosine) on three labelled sets and Spearman
agreement with the Lee human similarity judgements.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from dlnet.data import shipped_path
from dlnet.node.models import NativeModel, ProjectedModel
from dlnet.node.models.kinds import (
    HONEST_STRENGTH,
    NoisyNative,
    additive,
    fabricate_inverse,
    noise,
    private_map,
)
from dlnet.node.models.minilm import NATIVE_DIM, MiniLM
from dlnet.protocol.config import DEFAULT_PROJECTION_SEED
from dlnet.protocol.consensus import quantise
from dlnet.protocol.dataset import parse_dataset
from dlnet.protocol.masks import derive_tasks
from dlnet.protocol.scoring import ScoringParams, score_round

DIM = 1024
NETWORK_ID = hashlib.sha256(b"dlnet validity study").digest()
Embed = Callable[[list[str]], NDArray[np.float32]]


@dataclass
class Encoder:
    name: str
    group: str  # honest | graded | cheat
    embed: Embed
    fabricate: float | None = None  # inverse slots forged as full - mask + noise of this size


class NativeCache:
    """A MiniLM variant's native (pre-projection) embeddings, computed once per text."""

    native_dim = NATIVE_DIM

    def __init__(self, **variant: Any) -> None:
        self.model = MiniLM(threads=2, **variant)
        self.cache: dict[str, NDArray[np.float32]] = {}

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            for t, v in zip(todo, self.model.embed_native(todo), strict=True):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])


def projected(native: NativeModel, private_seed: int | None = None) -> Embed:
    """The network embedding of a native model, optionally behind a private map."""
    pre = None if private_seed is None else private_map(private_seed, HONEST_STRENGTH)
    return ProjectedModel(native, DIM, DEFAULT_PROJECTION_SEED, pre).embed


def family(small: bool) -> list[Encoder]:
    full = NativeCache()
    honest_count = 4 if small else 6
    out = [Encoder(f"honest-{i}", "honest", projected(full, i)) for i in range(honest_count)]
    out.append(Encoder("finetuned", "honest", projected(NativeCache(weights="finetuned"), 94)))
    graded: list[tuple[str, NativeModel]] = [
        ("truncated-4-layers", NativeCache(layers=4)),
        ("truncated-2-layers", NativeCache(layers=2)),
        ("random-init", NativeCache(weights="random")),
        ("static-mean", NativeCache(static=True, pooling="mean")),
    ]
    levels = (0.5, 2.0) if small else (0.5, 1.0, 2.0)
    if not small:
        graded.append(("truncated-1-layer", NativeCache(layers=1)))
    out += [Encoder(name, "graded", projected(native)) for name, native in graded]
    out += [
        Encoder(f"noise-{level}", "graded", projected(NoisyNative(full, level, i), 90 + i))
        for i, level in enumerate(levels)
    ]
    rand = noise(DIM, DEFAULT_PROJECTION_SEED, seed=7)
    bag = additive(DIM, DEFAULT_PROJECTION_SEED, seed=7)
    out += [
        Encoder("cheat-random", "cheat", rand.embed),
        Encoder(
            "cheat-tiny-random",
            "cheat",
            noise(DIM, DEFAULT_PROJECTION_SEED, seed=8, norm=1.0).embed,
        ),
        Encoder("cheat-zero", "cheat", lambda t: np.zeros((len(t), DIM), dtype=np.float32)),
        Encoder("cheat-constant", "cheat", lambda t: np.full((len(t), DIM), 3.0, np.float32)),
        Encoder("cheat-additive", "cheat", bag.embed),
        # Static word-piece vectors summed: a real bag-of-units encoder, DL = 0 by construction.
        Encoder("static-sum", "cheat", projected(NativeCache(static=True))),
        Encoder("cheat-fabricated", "cheat", projected(full, 93), fabricate=0.0),
        Encoder("cheat-fabricated-0.2", "cheat", projected(full, 95), fabricate=0.2),
    ]
    return out


def key_of(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def network_scores(
    encs: Sequence[Encoder], items: Sequence[str], rounds: int, params: ScoringParams
) -> dict[str, dict[str, float]]:
    """Per encoder, over the rounds: mean quantised score, mean DL, mean max-slot LOF, mean
    min-slot cosine to the consensus direction and mean composition agreement (cells that
    reached peer comparison), mean effective rank (RankMe)."""
    keys = {key_of(e.name): e for e in encs}
    acc: dict[str, dict[str, list[float]]] = {
        e.name: {"score": [], "dl": [], "lof": [], "cons": [], "comp": [], "erank": []}
        for e in encs
    }
    for r in range(rounds):
        tasks = derive_tasks(
            NETWORK_ID, r, items, shards_per_round=4, masks_per_shard=2, mask_fraction=0.5
        )
        texts = [t for task in tasks for t in task.texts]
        slots = len(tasks[0].texts)
        shards: list[dict[bytes, NDArray[np.float32]]] = [{} for _ in tasks]
        for k, e in keys.items():
            vecs = e.embed(texts).reshape(len(tasks), slots, DIM).copy()
            if e.fabricate is not None:
                rng = np.random.default_rng([r, *k[:8]])
                for s in range(len(tasks)):
                    for m in range((slots - 1) // 2):
                        vecs[s, 2 * m + 2] = fabricate_inverse(
                            vecs[s, 0], vecs[s, 2 * m + 1], e.fabricate, rng
                        )
            for s in range(len(tasks)):
                shards[s][k] = vecs[s]
        res = score_round(params, shards, [t.unit_counts for t in tasks], list(keys))
        for i, k in enumerate(res.encoders):
            name = keys[k].name
            acc[name]["score"] += [quantise(float(x)) / 65535 for x in res.scores[:, i]]
            acc[name]["dl"] += [float(x) for x in res.dl[:, i] if np.isfinite(x)]
            acc[name]["comp"] += [float(x) for x in res.composition[:, i] if np.isfinite(x)]
            for metric, grid, pick in (("lof", res.lof, np.max), ("cons", res.consensus, np.min)):
                acc[name][metric] += [
                    float(pick(row)) for row in grid[:, i, :] if np.all(np.isfinite(row))
                ]
            acc[name]["erank"].append(float(res.effective_rank[i]))
    return {
        n: {m: float(np.mean(v)) if v else float("nan") for m, v in d.items()}
        for n, d in acc.items()
    }


def _unit(x: NDArray[np.float32]) -> NDArray[np.float64]:
    x64 = x.astype(np.float64)
    return x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-12)


def knn_hits(x: NDArray[np.float32], labels: Sequence[str], k: int = 5) -> NDArray[np.bool_]:
    """Per item, whether the majority label of its k nearest others (cosine) is its own."""
    u = _unit(x)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    y = np.array(labels)
    hits = np.zeros(len(y), dtype=np.bool_)
    for i in range(len(y)):
        nn = np.argsort(-sims[i], kind="stable")[:k]
        values, counts = np.unique(y[nn], return_counts=True)
        hits[i] = values[np.argmax(counts)] == y[i]
    return hits


def labelled_sets(small: bool) -> dict[str, tuple[list[str], list[str]]]:
    cap = 150 if small else 400
    out = {}
    for name in ("pang_lee_polarity", "chatterbot_topics", "wordnet_lexnames"):
        rows = [
            line.split("\t", 1)
            for line in shipped_path(f"labelled/{name}.tsv").read_text().splitlines()
            if "\t" in line
        ]
        rng = np.random.default_rng(0)
        pick = sorted(rng.choice(len(rows), size=min(cap, len(rows)), replace=False))
        out[name] = ([rows[i][1] for i in pick], [rows[i][0] for i in pick])
    return out


@dataclass(frozen=True)
class LeeSet:
    """The Lee documents and their human similarity judgements, one per pair of documents in
    ``np.triu_indices`` order."""

    docs: list[str]
    judged: NDArray[np.float64]


def lee_set() -> LeeSet:
    docs = shipped_path("labelled/lee_documents.txt").read_text().splitlines()
    human = np.array(
        [
            [float(v) for v in line.split("\t")]
            for line in shipped_path("labelled/lee_similarities.tsv").read_text().splitlines()
        ]
    )
    return LeeSet(docs, np.maximum(human, human.T)[np.triu_indices(len(docs), 1)])


@dataclass(frozen=True)
class Resamples:
    """Bootstrap resamples shared by every encoder, so that quality differences are paired:
    item indices per labelled set and pair indices of the Lee similarity judgements."""

    items: dict[str, NDArray[np.int64]]
    pairs: NDArray[np.int64]


def resamples(sets: dict[str, tuple[list[str], list[str]]], n_pairs: int, count: int) -> Resamples:
    rng = np.random.default_rng(1)
    return Resamples(
        {
            name: rng.integers(0, len(texts), (count, len(texts)))
            for name, (texts, _) in sets.items()
        },
        rng.integers(0, n_pairs, (count, n_pairs)),
    )


def _spearman(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    # A constant similarity (zero or constant embeddings) agrees with nothing: rho 0.
    return 0.0 if np.ptp(a) == 0 else float(spearmanr(a, b).statistic)


def quality(
    e: Encoder, sets: dict[str, tuple[list[str], list[str]]], lee: LeeSet, boot: Resamples
) -> dict[str, Any]:
    """Supervised quality (mean of the three kNN accuracies and the Lee rho) and its value on
    every bootstrap resample (``quality_boot``)."""
    hits = {name: knn_hits(e.embed(texts), labels) for name, (texts, labels) in sets.items()}
    q: dict[str, Any] = {name: float(np.mean(h)) for name, h in hits.items()}
    u = _unit(e.embed(lee.docs))
    upper = (u @ u.T)[np.triu_indices(len(lee.docs), 1)]
    q["lee_similarity"] = _spearman(upper, lee.judged)
    q["quality"] = float(np.mean(list(q.values())))
    parts = [np.mean(h[boot.items[name]], axis=1) for name, h in hits.items()]
    parts.append(np.array([_spearman(upper[i], lee.judged[i]) for i in boot.pairs]))
    q["quality_boot"] = [float(x) for x in np.mean(parts, axis=0)]
    return q


def resolved(boot_a: Sequence[float], boot_b: Sequence[float], diff: float) -> tuple[bool, float]:
    """Whether a quality difference is more than twice its paired bootstrap standard error,
    and that standard error."""
    se = float(np.std(np.asarray(boot_a) - np.asarray(boot_b)))
    return abs(diff) > 2 * se, se


def study(small: bool, rounds: int, params: ScoringParams) -> dict[str, Any]:
    items = parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines")
    encs = family(small)
    net = network_scores(encs, items, rounds, params)
    sets = labelled_sets(small)
    lee = lee_set()
    boot = resamples(sets, len(lee.judged), 50 if small else 200)
    rows = []
    for e in encs:
        rows.append(
            {"encoder": e.name, "group": e.group, **net[e.name], **quality(e, sets, lee, boot)}
        )
    real = [r for r in rows if r["group"] != "cheat"]

    def rho(metric: str, sign: float = 1.0) -> float:
        # nan: the encoder never reached this measurement (gated), the worst value.
        xs = [-math.inf if math.isnan(r[metric]) else sign * r[metric] for r in real]
        return float(spearmanr(xs, [r["quality"] for r in real]).statistic)

    honest = [r["score"] for r in rows if r["group"] == "honest"]
    cheats = [r["score"] for r in rows if r["group"] == "cheat"]
    wrong, real_wrong = out_of_order(
        {r["encoder"]: r["score"] for r in real},
        {r["encoder"]: r["quality"] for r in real},
        {r["encoder"]: r["quality_boot"] for r in real},
    )
    auroc = roc_auc_score([1] * len(honest) + [0] * len(cheats), honest + cheats)
    return {
        "rounds": rounds,
        "small": small,
        "params": params.__dict__,
        "rows": rows,
        "spearman_score_vs_quality": rho("score"),
        "spearman_low_dl_vs_quality": rho("dl", -1.0),
        "spearman_low_lof_vs_quality": rho("lof", -1.0),
        "spearman_consensus_cos_vs_quality": rho("cons"),
        "spearman_composition_vs_quality": rho("comp"),
        "auroc_honest_vs_cheat": float(auroc),
        "out_of_order": wrong,
        "out_of_order_resolved": real_wrong,
        "min_honest_score": min(honest),
        "max_cheat_score": max(cheats),
    }


def markdown(res: dict[str, Any], command: str) -> str:
    lines = [
        f"Command: `{command}` (2 cores, CPU, torch 2.13.0; {res['rounds']} rounds of 4 shards "
        "x 2 masks on data/corpus.txt; scoring: protocol/scoring.py defaults, changed only "
        "by --set).",
        "",
        f"- Spearman rho, network score vs supervised quality (non-cheat family): "
        f"**{res['spearman_score_vs_quality']:.3f}**",
        f"- Spearman rho, low DL alone vs quality: {res['spearman_low_dl_vs_quality']:.3f}",
        f"- Spearman rho, low LOF alone vs quality: {res['spearman_low_lof_vs_quality']:.3f}",
        "- Spearman rho, cosine to the consensus embedding alone vs quality: "
        f"{res['spearman_consensus_cos_vs_quality']:.3f}",
        "- Spearman rho, composition agreement alone vs quality: "
        f"{res['spearman_composition_vs_quality']:.3f}",
        f"- AUROC honest vs cheat (network score): **{res['auroc_honest_vs_cheat']:.3f}**; "
        f"lowest honest {res['min_honest_score']:.4f}, highest cheat "
        f"{res['max_cheat_score']:.4f}",
        "- Non-cheat pairs whose scores are out of quality order (quality difference ± its paired "
        f"bootstrap s.e.): {len(res['out_of_order'])}, **{res['out_of_order_resolved']} "
        "resolved** (difference > 2 s.e.)",
        "",
        "| encoder | group | network score | composition | DL | max-slot LOF | min-slot cos "
        "| eff. rank | pang-lee kNN | chatterbot kNN | wordnet kNN | Lee rho | quality | s.e. |",
        "| --- | --- |" + " ---: |" * 12,
    ]
    for r in sorted(res["rows"], key=lambda r: -r["score"]):
        lines.append(
            f"| {r['encoder']} | {r['group']} | {r['score']:.4f} | {r['comp']:.3f} | "
            f"{r['dl']:.3f} | {r['lof']:.3f} | {r['cons']:.3f} | {r['erank']:.1f} | "
            f"{r['pang_lee_polarity']:.3f} | {r['chatterbot_topics']:.3f} | "
            f"{r['wordnet_lexnames']:.3f} | {r['lee_similarity']:.3f} | {r['quality']:.3f} | "
            f"{np.std(r['quality_boot']):.3f} |"
        )
    return "\n".join(lines) + "\n"


TESTNET_KINDS = {
    "finetuned": "finetuned",
    "truncated@4": "truncated-4-layers",
    "truncated@2": "truncated-2-layers",
    "truncated@1": "truncated-1-layer",
    "noisy@0.5": "noise-0.5",
    "noisy@1": "noise-1.0",
    "noisy@2": "noise-2.0",
    "random-init": "random-init",
    "static@mean": "static-mean",
    "static@sum": "static-sum",
}
"""Testnet kind -> the study encoder of the same model; ``honest`` has the honest-* mean.
Kinds whose study encoder is a cheat (``static@sum``, a bag of units) are left out."""


def out_of_order(
    score: dict[str, float], quality: dict[str, float], boot: dict[str, Sequence[float]]
) -> tuple[list[str], int]:
    """Pairs whose scores are in the opposite order of their qualities, each with its quality
    difference and that difference's paired bootstrap standard error; and how many of them
    are resolved (difference more than twice its standard error)."""
    out, count = [], 0
    for a, b in itertools.combinations(sorted(score, key=lambda k: -quality[k]), 2):
        diff = quality[a] - quality[b]
        if diff * (score[a] - score[b]) >= 0:
            continue
        real, se = resolved(boot[a], boot[b], diff)
        count += real
        out.append(
            f"{a} below {b} (quality {diff:+.3f} ± {se:.3f}, "
            f"{'resolved' if real else 'within resolution'})"
        )
    return out, count


def testnet_agreement(report: dict[str, Any], study_rows: Sequence[dict[str, Any]]) -> str:
    """Per round, Spearman rho of the testnet scores of the non-cheat encoders against the
    study's quality of their models (all of them, and the graded ones without ``honest``) and
    the pairs of kinds out of quality order; then every kind's mean score over the rounds next
    to its quality, and the pairs of kinds whose mean scores are out of quality order."""
    quality = {r["encoder"]: r["quality"] for r in study_rows}
    boots = {r["encoder"]: r["quality_boot"] for r in study_rows}
    group = {r["encoder"]: r["group"] for r in study_rows}
    kinds = {k: name for k, name in TESTNET_KINDS.items() if group[name] != "cheat"}
    of_kind = {k: quality[name] for k, name in kinds.items()}
    boot = {k: boots[name] for k, name in kinds.items()}
    honest = [name for name in quality if name.startswith("honest-")]
    of_kind["honest"] = float(np.mean([quality[name] for name in honest]))
    boot["honest"] = list(np.mean([boots[name] for name in honest], axis=0))
    lines = [
        "| round | rho, all non-cheat encoders | rho, graded kinds only "
        "| kind pairs out of order |",
        "| --- | ---: | ---: | --- |",
    ]
    by_kind: dict[str, list[float]] = {}
    for rnd in report["rounds"]:
        rows = [r for r in rnd["ranking"] if r["kind"] in of_kind]
        graded = [r for r in rows if r["kind"] != "honest"]
        rhos = [
            spearmanr([r["score"] for r in rs], [of_kind[r["kind"]] for r in rs]).statistic
            for rs in (rows, graded)
        ]
        kind_scores: dict[str, list[float]] = {}
        for r in rows:
            kind_scores.setdefault(r["kind"], []).append(r["score"])
            by_kind.setdefault(r["kind"], []).append(r["score"])
        wrong, _ = out_of_order(
            {k: float(np.mean(v)) for k, v in kind_scores.items()}, of_kind, boot
        )
        lines.append(
            f"| {rnd['round']} | {rhos[0]:.3f} | {rhos[1]:.3f} | {'; '.join(wrong) or 'none'} |"
        )
    mean = {k: float(np.mean(v)) for k, v in by_kind.items()}
    lines += ["", "| kind | mean testnet score | quality (study) |", "| --- | ---: | ---: |"]
    for k in sorted(mean, key=lambda k: -mean[k]):
        lines.append(f"| {k} | {mean[k]:.4f} | {of_kind[k]:.3f} |")
    rho = spearmanr(list(mean.values()), [of_kind[k] for k in mean]).statistic
    wrong, real = out_of_order(mean, of_kind, boot)
    lines += [
        "",
        f"Spearman rho of the kinds' mean scores vs quality: **{rho:.3f}**; pairs of kinds out "
        f"of quality order: {'; '.join(wrong) or 'none'} — **{real} resolved**",
    ]
    return "\n".join(lines) + "\n"


def scoring_params(overrides: Sequence[str]) -> ScoringParams:
    """ScoringParams with ``FIELD=VALUE`` overrides, each value of its default's type."""
    base = ScoringParams()
    changes: dict[str, Any] = {}
    for item in overrides:
        name, _, value = item.partition("=")
        changes[name] = type(getattr(base, name))(value)
    return replace(base, **changes)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", action="store_true", help="the quick configuration CI runs")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a ScoringParams default (tuning tries), e.g. --set lof_k=10",
    )
    ap.add_argument("--testnet", type=Path, default=None, help="a testnet's report.json")
    ap.add_argument("--quality", type=Path, default=None, help="a study's --json output")
    args = ap.parse_args()
    if args.testnet:
        if not args.quality:
            ap.error("--testnet needs --quality STUDY_JSON")
        report = json.loads(args.testnet.read_text())
        print(testnet_agreement(report, json.loads(args.quality.read_text())["rows"]))
        return 0
    rounds = args.rounds or (2 if args.small else 8)
    res = study(args.small, rounds, scoring_params(args.set))
    text = markdown(res, "python scripts/validity.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
