"""Scoring of encoders: differential loss, composition agreement, LOF and consensus cuts, gates,
weighted embedding.

Per shard s and encoder e the validator holds one (slots, dim) array: slot 0 = full F, slot
2m+1 = mask A_m, slot 2m+2 = inverse B_m. The score of a cell is

    score = 0                    if the cell is missing, invalid, gated or an outlier,
                                 or its shard has < min_encoders_for_lof voices
          = comp * dl_factor(dl, median dl of the shard) * probe      otherwise

where ``comp`` (in [0, 1]) grows with the encoder's *composition agreement* over the round's
passing cells: the cosine between its composition residual F - A_m - B_m and the consensus
(coordinate-wise median) of the OTHER voices' residual directions on the shard; dl is the
differential loss, the residual's norm relative to F, whose factor falls as DL moves away from
the shard's median, either way; ``probe`` is the encoder's pooled inverse-cloze grade on the
validators' probes (protocol/probes.py), the one grade that is not agreement. LOF, the
cosine to the consensus embedding direction and the text margin (nearer its own text's
consensus direction than any other text's of the round) are hard cuts (outliers), all computed
on every slot on the DIRECTIONS of the embeddings (unit vectors).
Every peer statistic is taken over *voices*: cells whose directions are near-identical on every
slot (cosine > duplicate_cos) are one voice, so copies of one model do not add up.

Why this shape, and every threshold: docs/PROTOCOL.md §2.5 "Scoring", measured in
docs/VALIDITY.md.

Reproducibility: encoders are processed in canonical (sorted pubkey) order whatever the input
order; everything is float64; reductions are numpy pairwise sums over fixed-length contiguous
axes, never BLAS dot products (whose blocking depends on the build), and pairwise distances are
given to scikit-learn as a precomputed matrix (algorithm='brute'), so the same inputs give the same
bits on the same platform and library versions. The effective rank (SVD, LAPACK) only feeds a
threshold gate. Validators on different platforms may differ in the last ulp; the stake-weighted
median of quantised scores absorbs that.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.influence import voice_influence
from dlnet.protocol.params import DlForm, ScoringParams

Status = Literal["ok", "missing", "malformed", "non_finite", "zero_norm", "collapse"]
"""Why a (shard, encoder) cell is (not) scored: ``ok`` cells are scored, all others score 0."""
Cut = Literal["unchecked", "consensus", "lof", "too_exact", "text"]
"""Why an ``ok`` cell scores 0: its shard had too few voices to compare (``unchecked``), or the
first cut that took it, in this order: the consensus cosine, LOF, the too-exact gate, the text
cut."""


@dataclass(frozen=True)
class RoundScores:
    """One validator's view of a round. Arrays are indexed [shard, encoder(, slot)]."""

    encoders: tuple[bytes, ...]
    """Strictly sorted pubkeys (the canonical order of every encoder axis)."""
    scores: NDArray[np.float64]
    """(S, E) combined scores in [0, 1]."""
    outliers: NDArray[np.bool_]
    """(S, E) True for a valid cell judged an outlier and for an invalid or gated cell."""
    dl: NDArray[np.float64]
    """(S, E) differential loss; nan where the cell has no usable data."""
    lof: NDArray[np.float64]
    """(S, E, slots) LOF among the shard's ok encoders; 1 when too few peers; nan if not ok."""
    consensus: NDArray[np.float64]
    """(S, E, slots) cosine of the slot's direction to the consensus direction; 1 when too few
    peers; nan if not ok."""
    composition: NDArray[np.float64]
    """(S, E) composition agreement in [-1, 1]; 1 when too few peers; nan if not ok."""
    text_margin: NDArray[np.float64]
    """(S, E) the cell's text margin, its ``text_cut_slots``-th least over its slots
    (`text_margins`); inf when the round has no other checked shard; nan when the shard is not
    checked or the cell is not ok."""
    median_dl: NDArray[np.float64]
    """(S,) the shard's median DL over its voices (the DL factor's and the too-exact gate's
    reference); nan when the shard had too few voices to compare."""
    effective_rank: NDArray[np.float64]
    """(E,) RankMe effective rank of the encoder's usable embeddings; nan if none."""
    status: tuple[tuple[Status, ...], ...]
    """(S, E) status of every cell."""
    gates: tuple[str | None, ...]
    """Per encoder: ``collapse``, else ``zero_norm`` if any shard was zero-norm, else None."""
    voice: NDArray[np.int64]
    """(S, E) index of the first (canonical order) encoder of the cell's voice, its group of
    near-duplicates on the shard (itself if it has none); -1 for a cell that is not ok."""
    cut: tuple[tuple[Status | Cut | None, ...], ...]
    """(S, E) why the cell scores 0: its status if not ``ok``, else its `Cut`; None for a cell
    that passed every cut (its score may still be 0: a composition or probe factor of 0)."""


@dataclass(frozen=True)
class _Checked:
    """A checked shard of `score_round` whose cells some voice passed the absolute cuts."""

    peers: list[int]
    """Its ok encoders (ascending)."""
    at: NDArray[np.intp]
    """Their rows in the shard's arrays of ok cells."""
    groups: list[list[int]]
    """Its voices (indices into ``peers``)."""
    weights: list[int]
    """The voices' weights."""
    centre: NDArray[np.float64]
    """(slots, dim) the text cut's reference: the consensus direction of each slot over the
    voices with a member that passed the absolute cuts."""


def score_round(
    params: ScoringParams,
    shards: Sequence[Mapping[bytes, NDArray[np.float32]]],
    unit_counts: Sequence[Sequence[int]],
    encoders: Sequence[bytes],
    *,
    dim: int | None = None,
    influence: Mapping[bytes, int] | None = None,
    probe: Mapping[bytes, float] | None = None,
) -> RoundScores:
    """Score every encoder of ``encoders`` on every shard from the embeddings held.

    ``influence`` (key -> u16, `influence.InfluenceState`; absent keys 0) weights every voice in
    every peer statistic: a voice weighs as its most influential member (``voice_weights``);
    voices of weight 0 do not move the consensus directions, the LOF reference or the gate
    medians, but are measured against them. None, or no influence among a shard's voices: every
    voice weighs 1.

    ``shards[s][e]`` is encoder e's (slots, dim) array for shard s, absent when the validator
    lacks any of its reveals (the cell then scores 0); arrays of encoders not in ``encoders``
    are ignored. ``unit_counts[s]`` are the shard's unit counts in slot order (ShardTask). ``dim``
    defaults to the most common embedding width held (ties: the smallest).

    Steps: (1) cell status: missing / malformed (wrong shape) / non_finite / zero_norm (a slot with
    L2 norm <= zero_norm_eps) / ok; (2) collapse gate per encoder on the effective rank of all its
    valid vectors of the round; (3) per shard, the voices (``duplicate_groups``) of the ok cells;
    fewer than min_encoders_for_lof voices: the cells are unchecked and score 0; else per slot,
    LOF and cosine to the consensus direction of the voices;
    (4) composition agreement among the ok cells; (5) DL, the too-exact gate (DL below
    min_dl_ratio of the shard median) and the score: a passing cell's DL factor times the
    encoder's composition factor (its mean agreement over the round's passing cells) times its
    probe factor ``probe[e]`` (protocol/probes.py, `pooled_grade`; absent keys 0; None: probes
    are off and every factor is 1).
    """
    problems = params.problems()
    if problems:
        raise ValueError("; ".join(f"scoring.{name}: {text}" for name, text in problems))
    if len(unit_counts) != len(shards):
        raise ValueError(f"{len(shards)} shards but {len(unit_counts)} unit count rows")
    order = tuple(sorted(set(encoders)))
    n_shards, n_enc = len(shards), len(order)
    n_slots = len(unit_counts[0]) if unit_counts else 1
    if n_slots % 2 != 1 or any(len(c) != n_slots for c in unit_counts):
        raise ValueError("every shard needs 1 + 2 * masks_per_shard unit counts")
    width = dim if dim is not None else _common_width(shards, order)

    # Per shard: every cell's status, the ok cells (before the collapse gate) and their
    # float64 values (cells, slots, dim).
    status: list[list[Status]] = []
    ok_cells: list[list[int]] = []
    held_ok: list[NDArray[np.float64]] = []
    for held in shards:
        present = [e for e, key in enumerate(order) if key in held]
        found, x = _check_cells([held[order[e]] for e in present], n_slots, width, params)
        row: list[Status] = ["missing"] * n_enc
        for e, cell in zip(present, found, strict=True):
            row[e] = cell
        status.append(row)
        ok_cells.append([e for e, cell in zip(present, found, strict=True) if cell == "ok"])
        held_ok.append(x)

    vectors: dict[int, list[NDArray[np.float64]]] = {}
    for cells, x in zip(ok_cells, held_ok, strict=True):
        for e, cell in zip(cells, x, strict=True):
            vectors.setdefault(e, []).append(cell)
    erank = np.full(n_enc, np.nan)
    for e, rows in vectors.items():
        erank[e] = effective_rank(np.concatenate(rows))
    record = influence or {}
    # Per shard, the ok cells' directions (every row divided by its norm) and the
    # near-duplicate relation among them, before the collapse gate: the round's voices and,
    # over the cells the gate leaves, each shard's voices.
    units = [_directions(x.reshape(len(x) * n_slots, width)).reshape(x.shape) for x in held_ok]
    near = [near_duplicates(u, params.duplicate_cos) for u in units]
    round_voices = _round_voices(ok_cells, near)
    round_weights = voice_weights(record, [[order[e] for e in v] for v in round_voices])
    gates = _gates(params, erank, status, round_voices, round_weights)
    for e, gate in enumerate(gates):
        if gate == "collapse":
            for s in range(n_shards):
                if status[s][e] == "ok":
                    status[s][e] = "collapse"

    scores = np.zeros((n_shards, n_enc))
    outliers = np.zeros((n_shards, n_enc), dtype=np.bool_)
    passed = np.zeros((n_shards, n_enc), dtype=np.bool_)  # checked, not cut
    dl = np.full((n_shards, n_enc), np.nan)
    lof = np.full((n_shards, n_enc, n_slots), np.nan)
    cons = np.full((n_shards, n_enc, n_slots), np.nan)
    comp = np.full((n_shards, n_enc), np.nan)
    margin = np.full((n_shards, n_enc), np.nan)
    medians = np.full(n_shards, np.nan)
    voice = np.full((n_shards, n_enc), -1, dtype=np.int64)
    cut: list[list[Status | Cut | None]] = [
        [None if cell == "ok" else cell for cell in row] for row in status
    ]
    # Per checked shard (enough voices to compare) whose cells some voice passed the absolute
    # cuts: what the text cut and the composition agreement need, once every shard's
    # reference direction is known.
    checked: dict[int, _Checked] = {}
    for s in range(n_shards):
        dl[s, ok_cells[s]] = differential_loss(held_ok[s], unit_counts[s], params.dl_form)
        outliers[s] = [status[s][e] not in ("ok", "missing") for e in range(n_enc)]
        peers = [e for e in range(n_enc) if status[s][e] == "ok"]
        if not peers:
            continue
        at = np.searchsorted(ok_cells[s], peers)
        groups = duplicate_groups(near[s][np.ix_(at, at)])
        for group in groups:
            voice[s, [peers[i] for i in group]] = peers[group[0]]
        weights = voice_weights(record, [[order[peers[i]] for i in g] for g in groups])
        if len(groups) < params.min_encoders_for_lof:
            # Too few voices to compare: the cells are unchecked and earn nothing.
            lof[s, peers], cons[s, peers], comp[s, peers] = 1.0, 1.0, 1.0
            for e in peers:
                cut[s][e] = "unchecked"
            continue
        centre = np.zeros((n_slots, width))
        for j in range(n_slots):
            u = units[s][at, j]
            lof[s, peers, j], centre[j] = _peer_stats(u, groups, params, weights)
            cons[s, peers, j] = np.sum(u * centre[j], axis=-1)
        voice_dl = [float(np.median(dl[s, [peers[i] for i in g]])) for g in groups]
        medians[s] = float(weighted_median(np.array(voice_dl), weights))
        dl_floor = params.min_dl_ratio * medians[s]
        for e in peers:
            if float(np.min(cons[s, e])) < params.min_consensus_cos:
                cut[s][e] = "consensus"
            elif float(np.max(lof[s, e])) > params.lof_threshold:
                cut[s][e] = "lof"
            elif float(dl[s, e]) < dl_floor:
                cut[s][e] = "too_exact"
        first = [cut[s][e] is None for e in peers]
        outliers[s, peers] = np.logical_not(first)
        credible = [v for v, g in enumerate(groups) if any(first[i] for i in g)]
        if not credible:
            continue
        if len(credible) < len(groups):
            kept_weights = [weights[v] for v in credible]
            rows = [_voice_rows(units[s][at, j], groups)[credible] for j in range(n_slots)]
            centre = np.stack([consensus_direction(r, kept_weights) for r in rows])
        checked[s] = _Checked(peers, at, groups, weights, centre)
    references = {s: shard.centre for s, shard in checked.items()}
    for s, shard in checked.items():
        others = [c for t, c in references.items() if t != s]
        peers = shard.peers
        margin[s, peers] = text_margins(
            units[s][shard.at], shard.centre, others, params.same_text_cos, params.text_cut_slots
        )
        for e in peers:
            if cut[s][e] is None and float(margin[s, e]) < params.min_text_margin:
                cut[s][e] = "text"
            if cut[s][e] is not None:
                outliers[s, e] = True
                continue
            scores[s, e] = dl_factor(params, float(dl[s, e]), float(medians[s]))
            passed[s, e] = True
        residuals = _residuals(held_ok[s][shard.at], unit_counts[s], params.dl_form)
        kept = [bool(passed[s, [peers[i] for i in g]].any()) for g in shard.groups]
        comp[s, peers] = composition_agreement(residuals, shard.groups, shard.weights, kept)
    for e, key in enumerate(order):
        agreements = [float(comp[s, e]) for s in range(n_shards) if passed[s, e]]
        if agreements:
            mean = math.fsum(agreements) / len(agreements)
            factor = min(max(mean, 0.0) / params.composition_full, 1.0)
            scores[:, e] *= factor
            if probe is not None:
                scores[:, e] *= probe.get(key, 0.0)
    return RoundScores(
        encoders=order,
        scores=scores,
        outliers=outliers,
        dl=dl,
        lof=lof,
        consensus=cons,
        composition=comp,
        text_margin=margin,
        median_dl=medians,
        effective_rank=erank,
        status=tuple(tuple(row) for row in status),
        gates=gates,
        voice=voice,
        cut=tuple(tuple(row) for row in cut),
    )


def _common_width(
    shards: Sequence[Mapping[bytes, NDArray[np.float32]]], order: Sequence[bytes]
) -> int:
    widths = Counter(
        int(arr.shape[1])
        for held in shards
        for key in order
        if key in held and (arr := held[key]).ndim == 2
    )
    if not widths:
        return 0
    top = max(widths.values())
    return min(w for w, c in widths.items() if c == top)


def _check_cells(
    arrays: Sequence[NDArray[np.float32]], n_slots: int, width: int, params: ScoringParams
) -> tuple[list[Status], NDArray[np.float64]]:
    """The status of each held array and the float64 copies of the ok ones, stacked
    (ok, slots, width) in the given order."""
    shaped = [i for i, arr in enumerate(arrays) if width and arr.shape == (n_slots, width)]
    x = np.array([arrays[i] for i in shaped], dtype=np.float64).reshape(len(shaped), n_slots, width)
    finite = np.all(np.isfinite(x), axis=(1, 2))
    zero = np.any(_norms(x) <= params.zero_norm_eps, axis=1)
    status: list[Status] = ["malformed"] * len(arrays)
    for i, ok_values, no_norm in zip(shaped, finite.tolist(), zero.tolist(), strict=True):
        status[i] = "non_finite" if not ok_values else "zero_norm" if no_norm else "ok"
    return status, x[finite & ~zero]


def _norms(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row L2 norms as sqrt of a pairwise sum of squares (no BLAS)."""
    squares: NDArray[np.float64] = np.sum(x * x, axis=-1)
    return np.sqrt(squares)


def _round_voices(
    ok_cells: Sequence[Sequence[int]], near: Sequence[NDArray[np.bool_]]
) -> list[list[int]]:
    """The round's voices among the encoders with an ok cell (``ok_cells[s]``, ascending, the
    encoders ok on shard s; ``near[s]``, `near_duplicates` among them): encoders a and b are
    one voice if they share an ok shard and are near-duplicates on EVERY shard where both are
    ok (closed transitively, as ``duplicate_groups``)."""
    members = sorted({e for cells in ok_cells for e in cells})
    position = {e: i for i, e in enumerate(members)}
    shared = np.zeros((len(members), len(members)), dtype=np.bool_)
    apart = np.zeros_like(shared)
    for cells, close in zip(ok_cells, near, strict=True):
        rows = [position[e] for e in cells]
        block = np.ix_(rows, rows)
        shared[block] = True
        apart[block] |= ~close
    return [[members[i] for i in group] for group in duplicate_groups(shared & ~apart)]


def _gates(
    params: ScoringParams,
    erank: NDArray[np.float64],
    status: Sequence[Sequence[Status]],
    voices: Sequence[Sequence[int]],
    weights: Sequence[int],
) -> tuple[str | None, ...]:
    """``collapse`` if the effective rank is below the absolute or the relative bound.

    The relative bound is ``collapse_rel_rank`` times the median over the round's ``voices``
    (``_round_voices``) of the median effective rank of the voice's members, weighted by the
    voices' ``weights`` (`weighted_median`), so copies of one model cannot move it, nor can
    voices without influence while any voice has some.
    """
    known = [
        (float(np.median(erank[list(v)])), w)
        for v, w in zip(voices, weights, strict=True)
        if not np.isnan(erank[list(v)]).all()
    ]
    median = (
        float(weighted_median(np.array([k for k, _ in known]), [w for _, w in known]))
        if known
        else 0.0
    )
    bound = max(params.collapse_min_rank, params.collapse_rel_rank * median)
    gates: list[str | None] = []
    for e, rank in enumerate(erank):
        if not math.isnan(rank) and rank < bound:
            gates.append("collapse")
        elif any(row[e] == "zero_norm" for row in status):
            gates.append("zero_norm")
        else:
            gates.append(None)
    return tuple(gates)


def effective_rank(x: NDArray[np.float64]) -> float:
    """RankMe: exp of the entropy of the normalised singular values of x (rows = vectors).

    1 for a single direction; at most min(rows, dim). 0 for an all-zero matrix.
    """
    sv = np.linalg.svd(x, compute_uv=False)
    total = float(np.sum(sv))
    if total <= 0.0:
        return 0.0
    p = sv[sv > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def _residuals(x: NDArray[np.float64], counts: Sequence[int], form: DlForm) -> NDArray[np.float64]:
    """(cells, masks, dim) composition residuals ``F - a*A_m - b*B_m`` of (cells, slots, dim)
    cells, elementwise.

    ``literal``: a = b = 1. ``count_weighted``: a = n_A/n, b = n_B/n with the unit counts of
    slots 0, 2m+1, 2m+2 (the identity for mean pooling).
    """
    full, a, b = x[:, :1], x[:, 1::2], x[:, 2::2]
    if form == "count_weighted":
        a = a * (np.array(counts[1::2]) / counts[0])[:, np.newaxis]
        b = b * (np.array(counts[2::2]) / counts[0])[:, np.newaxis]
    out: NDArray[np.float64] = full - a - b
    return out


def dl_factor(params: ScoringParams, dl: float, median_dl: float) -> float:
    """The DL factor of a cell: ``1 - dl_weight * min((r - 1) / (dl_spread - 1), 1)`` with
    ``r = max(dl / median_dl, median_dl / dl)`` (r = 1 when both are 0, infinite when one is).

    Two-sided: a DL far above the shard's (noise, a model that composes badly) and one far below
    it are discounted alike. A reward for a small DL is cheap to buy: shifting the mask and the
    inverse by any vector v and the full by 2v keeps ``F - A - B`` and so the composition
    agreement, and with v along F shrinks ``||F - A - B|| / ||F||`` at will down to the
    too-exact gate (docs/VALIDITY.md, fourth study). Only divisions: no libm function, so
    every IEEE-754 platform gets the same bits.
    """
    if dl == median_dl:
        ratio = 1.0
    elif dl <= 0.0 or median_dl <= 0.0:
        ratio = math.inf
    else:
        ratio = max(dl / median_dl, median_dl / dl)
    return 1.0 - params.dl_weight * min((ratio - 1.0) / (params.dl_spread - 1.0), 1.0)


def differential_loss(
    x: NDArray[np.float64], counts: Sequence[int], form: DlForm
) -> NDArray[np.float64]:
    """Per cell of (cells, slots, dim) cells: the mean over masks of
    ``||F - a*A_m - b*B_m|| / ||F||``.

    The residuals are those of ``_residuals``; masks are summed in order m = 0, 1, ... and
    divided by their count; no masks gives 0.
    """
    full_norm = _norms(x[:, 0])
    total = np.zeros(x.shape[0])
    for norm in _norms(_residuals(x, counts, form)).T:
        total = total + norm / full_norm
    n_masks = (x.shape[1] - 1) // 2
    out: NDArray[np.float64] = total / n_masks if n_masks else total
    return out


def composition_agreement(
    residuals: NDArray[np.float64],
    groups: Sequence[Sequence[int]] | None = None,
    weights: Sequence[int] | None = None,
    kept: Sequence[bool] | None = None,
) -> NDArray[np.float64]:
    """Per row of ``residuals`` (peers, masks, dim): the mean over masks of the cosine between
    the peer's residual direction and the consensus residual direction of the OTHER voices
    that the cuts kept.

    Per mask m: ``u_e = r_e / ||r_e||`` (a zero residual has no direction: u_e = 0); with the
    voices ``groups`` (default one per row), their ``weights`` (default equal) and ``kept``
    (per voice, default all: the voices with a cell that passed the cuts), the consensus
    ``c_g`` of voice g is the coordinate-wise weighted median of the rows (``_voice_rows``) of
    the kept voices other than g (`leave_one_out_medians`) if g is kept and not alone, the row
    of g itself if it is the only kept voice, and the median of all kept voices if g is not
    kept (0 if none is); normalised (0 if 0); ``cos_e = sum(u_e * c_g)``; the agreement is
    ``(1/M) sum_m cos_e`` summed in order m = 0, 1, ... (no masks: 1). Every product is summed
    by numpy's pairwise sum, never a BLAS dot product.

    Leave-one-out because a voice is one of the median's inputs: with it in, any residual —
    a forged inverse's pure noise too — agrees with a consensus it pulled toward itself (0.05
    among 25 voices, more in a smaller pool). Kept voices only because what a cut voice (random
    vectors, another text, a too-exact forgery) composes like is no reference: among such
    voices, one real model left out of its own consensus would agree with noise.
    """
    n_peers, n_masks = residuals.shape[0], residuals.shape[1]
    if groups is None:
        groups = [[i] for i in range(n_peers)]
    if weights is None:
        weights = [1] * len(groups)
    if kept is None:
        kept = [True] * len(groups)
    if n_masks == 0:
        return np.ones(n_peers)
    member = np.zeros(n_peers, dtype=np.intp)
    for g, group in enumerate(groups):
        member[list(group)] = g
    inside = [g for g in range(len(groups)) if kept[g]]
    outside = [g for g in range(len(groups)) if not kept[g]]
    total = np.zeros(n_peers)
    for m in range(n_masks):
        u = _directions(residuals[:, m])
        rows = _voice_rows(u, groups)
        centres = np.zeros_like(rows)
        if len(inside) == 1:
            centres[inside] = rows[inside]
        elif inside:
            centres[inside] = leave_one_out_medians(rows[inside], [weights[g] for g in inside])
        if inside and outside:
            centres[outside] = weighted_median(rows[inside], [weights[g] for g in inside]) + 0.0
        total += np.sum(u * _directions(centres)[member], axis=-1)
    out: NDArray[np.float64] = total / n_masks
    return out


def leave_one_out_medians(x: NDArray[np.float64], weights: Sequence[int]) -> NDArray[np.float64]:
    """Row v: `weighted_median` of the rows of x (n, d) but row v, under ``weights`` but v's —
    bit for bit but for the sign of a zero (always +0.0 here), from one sort per coordinate
    instead of n. Zeros for n = 1 (no other row).

    Over the rows of positive effective weight (`_effective_weights`), sorted per coordinate
    with cumulative weights W and total T: without row v (weight w, sorted position p), the
    first remaining position i with ``2 W'_i >= T - w`` is the first i < p with
    ``2 W_i >= T - w`` if there is one, else the first i > p with ``2 W_i >= T + w``; an exact
    equality takes the mean with the next remaining value, as `weighted_median` does. A row of
    weight 0 takes no part: its median is the whole set's. The one row left alone with weight
    (every other weight 0) falls back to `weighted_median` itself (all others then count 1).
    """
    n, d = x.shape
    out = np.zeros((n, d))
    if n < 2:
        return out
    w = _effective_weights(weights)
    rows = [i for i in range(n) if w[i] > 0]
    if len(rows) < n:
        out[:] = weighted_median(x, weights)
    if len(rows) == 1:
        v = rows[0]
        out[v] = weighted_median(np.delete(x, v, axis=0), [0] * (n - 1))
        return out + 0.0
    data = np.asarray(x, dtype=np.float64)[rows]
    kept = np.array([w[i] for i in rows], dtype=np.int64)
    m = len(rows)
    order = np.argsort(data, axis=0, kind="stable")
    ordered = np.take_along_axis(data, order, axis=0)
    twice = 2 * np.cumsum(kept[order], axis=0)  # (m, d), each column nondecreasing
    total = int(kept.sum())
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m)[:, np.newaxis], axis=0)  # (m, d): row -> position
    # Every column's doubled cumulative weights in one ascending array (columns apart by a
    # stride above any value), so one searchsorted answers every (row, coordinate) query.
    stride = 2 * total + 2 * int(kept.max()) + 1
    offset = np.arange(d, dtype=np.int64) * stride
    keys = (twice + offset).T.ravel()
    base = np.arange(d, dtype=np.intp) * m
    wv = kept[:, np.newaxis]
    below = np.searchsorted(keys, (offset + (total - wv)).ravel()).reshape(m, d) - base
    above = np.searchsorted(keys, (offset + (total + wv)).ravel()).reshape(m, d) - base
    early = below < rank
    # Both sides of each np.where are evaluated: indices are clipped, the unused side's value is
    # dropped. A remaining position always exists (the last one holds the whole remaining weight).
    pos = np.minimum(np.where(early, below, np.maximum(above, rank + 1)), m - 1)
    tie = np.take_along_axis(twice, pos, axis=0) == np.where(early, total - wv, total + wv)
    nxt = np.minimum(np.where(early & (pos + 1 == rank), pos + 2, pos + 1), m - 1)
    low = np.take_along_axis(ordered, pos, axis=0)
    high = np.take_along_axis(ordered, nxt, axis=0)
    out[rows] = np.where(tie, (low + high) / 2, low)
    return out + 0.0  # -0.0 -> +0.0: which of equal zeros a median picks is not specified


def consensus_direction(voices: NDArray[np.float64], weights: Sequence[int]) -> NDArray[np.float64]:
    """The coordinate-wise weighted median (`weighted_median`) of the voices' rows, normalised
    (0 if the median is 0)."""
    out: NDArray[np.float64] = _directions(weighted_median(voices, weights)[np.newaxis])[0]
    return out


def text_margins(
    units: NDArray[np.float64],
    centre: NDArray[np.float64],
    others: Sequence[NDArray[np.float64]],
    same_text_cos: float,
    rank: int = 1,
) -> NDArray[np.float64]:
    """Per cell of ``units`` ((cells, slots, dim) directions of one shard), its text margin: the
    ``rank``-th least (1: the least; clipped to the slot count) over the slots of the slot's
    margin, the cosine of slot j to ``centre[j]`` (the shard's consensus direction of slot j)
    minus its greatest cosine to a consensus direction of another text. The other
    texts are the slots of ``others`` (each a (slots, dim) array: the round's other checked
    shards, in shard order), but for a shard whose full slot's consensus has a cosine above
    ``same_text_cos`` to ``centre[0]`` (the same item twice: none of its slots is another
    text, as none of this shard's own other slots is) and for a slot whose consensus has a
    cosine above it to ``centre[j]`` (the same string in two items). inf when no other text is
    left for any slot.

    Every cosine is a pairwise sum over the contiguous last axis; the maximum is taken over the
    other texts in order, so the result has the same bits whatever else is computed alongside.
    """
    own = np.sum(units * centre, axis=-1)  # (cells, slots)
    best = np.full(own.shape, -np.inf)
    for other in others:
        if float(np.sum(centre[0] * other[0])) > same_text_cos:
            continue
        for row in other:
            same = np.sum(centre * row, axis=-1) > same_text_cos  # (slots,)
            cos = np.sum(units * row, axis=-1)
            best = np.where(same, best, np.maximum(best, cos))
    k = min(max(rank, 1), own.shape[1]) - 1
    out: NDArray[np.float64] = np.sort(own - best, axis=1)[:, k]
    return out


def _voice_rows(u: NDArray[np.float64], groups: Sequence[Sequence[int]]) -> NDArray[np.float64]:
    """One row per voice: the row itself for a group of one, else the normalised mean of its
    members' rows (summed in member order)."""
    rows = []
    for group in groups:
        if len(group) == 1:
            rows.append(u[group[0]])
            continue
        acc = np.zeros(u.shape[1])
        for i in group:
            acc = acc + u[i]
        rows.append(_directions(acc[np.newaxis])[0])
    return np.stack(rows)


def _directions(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows divided by their norm; an all-zero row stays zero."""
    norms = _norms(x)
    safe = np.where(norms > 0.0, norms, 1.0)
    out: NDArray[np.float64] = np.where(norms[:, np.newaxis] > 0.0, x / safe[:, np.newaxis], 0.0)
    return out


def near_duplicates(units: NDArray[np.float64], duplicate_cos: float) -> NDArray[np.bool_]:
    """The near-duplicate relation among the rows of ``units`` ((peers, slots, dim) unit rows):
    an (peers, peers) symmetric matrix, True for a != b whose cosine exceeds ``duplicate_cos``
    on every slot; none for ``duplicate_cos >= 1``. A cosine is ``np.sum(u_a * u_b, axis=-1)``,
    a pairwise sum over the contiguous last axis (its bits do not depend on which other rows
    are summed alongside); the cosines of slots 1, 2, ... are computed only for the pairs above
    the threshold on slot 0, the others being decided."""
    n = units.shape[0]
    close = np.zeros((n, n), dtype=np.bool_)
    if duplicate_cos >= 1.0:
        return close
    for a in range(n - 1):
        cos = np.sum(units[a + 1 :, 0] * units[a, 0], axis=-1)
        later = a + 1 + np.flatnonzero(cos > duplicate_cos)
        if later.size:
            rest = np.sum(units[later, 1:] * units[a, 1:], axis=-1)
            later = later[np.all(rest > duplicate_cos, axis=-1)]
        close[a, later] = True
    return close | close.T


def duplicate_groups(close: NDArray[np.bool_]) -> list[list[int]]:
    """The voices of a shard: the connected components of the near-duplicate relation ``close``
    (`near_duplicates`), closed transitively. Each group is ascending; groups are ordered by
    their first member; they do not depend on the order in which pairs are visited."""
    a, b = np.nonzero(np.triu(close, 1))
    return _components(close.shape[0], list(zip(a.tolist(), b.tolist(), strict=True)))


def _components(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the graph on 0..n-1 with edges ``pairs``: each ascending, ordered
    by their first member."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [groups[r] for r in sorted(groups)]


def _peer_stats(
    x: NDArray[np.float64],
    groups: Sequence[Sequence[int]],
    params: ScoringParams,
    weights: Sequence[int],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LOF of each row of x and the slot's consensus direction (`consensus_direction` of the
    voices; x is one slot of one shard, n ok encoders forming at least min_encoders_for_lof
    voices ``groups``), both on the rows' directions: the rows of x are the slot's rows of the
    cells' ``_directions`` (ok rows have norm > 0).

    LOF is computed over the distinct voice rows (``_voice_rows``; identical rows are one point:
    duplicates make LOF's local density infinite) with n_neighbors = min(lof_k, n_distinct - 1),
    Euclidean distances precomputed exactly as sqrt(sum((x_i - x_j)^2)); each row gets its
    voice's LOF. The cosine to the consensus direction is an absolute measure, so the pool's
    make-up does not move it as it moves a distance ratio to the pool's median distance. Fewer than
    min_encoders_for_lof distinct voice rows gives LOF 1.

    The LOF *reference* is the voices of positive weight (all voices if none has weight, or
    all have): LOF is fitted on the reference's distinct rows only; a voice outside it is
    scored as a new point against them (scikit-learn ``novelty=True``, ``score_samples`` on its
    distances to the reference rows), so voices without influence cannot make a dense cluster
    of their own that passes. Fewer than min_encoders_for_lof distinct reference rows: LOF 1.
    """
    voices = _voice_rows(x, groups)
    w = _effective_weights(weights)
    ref = [v for v in range(len(groups)) if w[v] > 0]
    distinct, inverse = distinct_rows(voices[ref])
    lof = np.ones(x.shape[0])
    if distinct.shape[0] >= params.min_encoders_for_lof:
        dist = _distances(distinct)
        k = min(params.lof_k, distinct.shape[0] - 1)
        outside = len(ref) < len(groups)
        # Imported here: scikit-learn takes ~2 s to import, and every `dlnet` command, node
        # start and config read would pay it; only scoring a round needs it.
        from sklearn import config_context
        from sklearn.neighbors import LocalOutlierFactor

        # The distances are finite and the parameters valid by construction: scikit-learn's
        # checks of both are skipped (0.15 of a fit's 0.39 ms at 100 encoders).
        with config_context(assume_finite=True, skip_parameter_validation=True):
            model = LocalOutlierFactor(
                n_neighbors=k, metric="precomputed", algorithm="brute", novelty=outside
            )
            model.fit(dist)
            fitted = -np.asarray(model.negative_outlier_factor_, dtype=np.float64)
            position = {v: i for i, v in enumerate(ref)}
            for v, group in enumerate(groups):
                if v in position:
                    lof[list(group)] = fitted[inverse[position[v]]]
                else:
                    gaps = _norms(distinct - voices[v])[np.newaxis]
                    lof[list(group)] = -float(model.score_samples(gaps)[0])
    return lof, consensus_direction(voices, weights)


def _distances(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """The symmetric matrix of Euclidean distances between the rows of x, each ``_norms(x[j]
    - x[i])`` (the sqrt of the pairwise sum of the squared differences): computed in place
    for j > i only, as ``(x_j - x_i)^2 == (x_i - x_j)^2`` exactly; the diagonal is 0."""
    n = x.shape[0]
    squares = np.zeros((n, n))
    diff = np.empty_like(x)
    for i in range(n - 1):
        d = np.subtract(x[i + 1 :], x[i], out=diff[: n - i - 1])
        np.multiply(d, d, out=d)
        np.add.reduce(d, axis=-1, out=squares[i, i + 1 :])
    upper = np.sqrt(squares)
    dist: NDArray[np.float64] = upper + upper.T
    return dist


def distinct_rows(rows: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """The distinct rows of a 2-d array of finite values in lexicographic order and, for each
    row, the index of its distinct row: ``np.unique(rows, axis=0, return_inverse=True)`` (equal
    rows, -0.0 equal to 0.0, are represented by the first of them), computed without sorting
    on every column: each row becomes a byte string that sorts as the row does (`_sort_keys`),
    and only the distinct strings are sorted."""
    keys = _sort_keys(rows)
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    ranked = sorted(first)
    rank = {key: r for r, key in enumerate(ranked)}
    inverse = np.array([rank[key] for key in keys], dtype=np.intp)
    return rows[[first[key] for key in ranked]].reshape(len(ranked), rows.shape[1]), inverse


def _sort_keys(rows: NDArray[np.float64]) -> list[bytes]:
    """Per row of finite floats, a byte string whose order (and equality) is the row's
    lexicographic order (and equality, -0.0 == 0.0): each value, -0.0 made 0.0, as the
    big-endian unsigned integer of its IEEE-754 bits with the sign bit set for values >= 0
    and every bit flipped for values < 0."""
    bits = (rows + 0.0).view(np.uint64)
    bits ^= (bits >> np.uint64(63)) * np.uint64(2**63 - 1) | np.uint64(2**63)
    return [row.tobytes() for row in bits.astype(">u8")]


def voice_weights(influence: Mapping[bytes, int], voices: Sequence[Sequence[bytes]]) -> list[int]:
    """Each voice's weight in the peer statistics: the largest influence among its members
    (`influence.voice_influence`: never the sum, so copies of one model cannot add up)."""
    return [voice_influence(influence, members) for members in voices]


def _effective_weights(weights: Sequence[int]) -> list[int]:
    """``weights``, or all 1 if none is positive (no record yet: every voice weighs the
    same)."""
    if any(w > 0 for w in weights):
        return [int(w) for w in weights]
    return [1] * len(weights)


def weighted_median(x: NDArray[np.float64], weights: Sequence[int]) -> NDArray[np.float64]:
    """Coordinate-wise weighted median of the rows of ``x`` ((n, d), or (n,) giving a 0-d
    value as float) under integer ``weights`` >= 0 (`_effective_weights`: all 0 counts as all
    1). Rows of weight 0 take no part. Equal weights: exactly ``numpy.median`` (same bits).
    Else per coordinate: the values sorted ascending (stable), the first whose cumulative
    weight W_i satisfies ``2 W_i >= total``; if ``2 W_i == total`` exactly, the mean of it and
    the next value (as the plain median of an even count). Integer sums: exact."""
    w = _effective_weights(weights)
    rows = [i for i, v in enumerate(w) if v > 0]
    data = np.asarray(x, dtype=np.float64)[rows]
    kept = np.array([w[i] for i in rows], dtype=np.int64)
    if bool(np.all(kept == kept[0])):
        # np.median(data, axis=0) partitions each coordinate's values, copied out of their
        # column; a transposed copy lays them out contiguously, partitioned in place: the same
        # partition of the same values (the same bits), a third less CPU at (100, 1024).
        by_coordinate = data.T.copy()
        return np.asarray(np.median(by_coordinate, axis=-1, overwrite_input=True), dtype=np.float64)
    flat = data.reshape(len(rows), -1)
    order = np.argsort(flat, axis=0, kind="stable")
    ordered = np.take_along_axis(flat, order, axis=0)
    cumulative = np.cumsum(kept[order], axis=0)
    total = int(kept.sum())
    first = np.argmax(2 * cumulative >= total, axis=0)
    cols = np.arange(flat.shape[1])
    low = ordered[first, cols]
    high = ordered[np.minimum(first + 1, len(rows) - 1), cols]
    exact = 2 * cumulative[first, cols] == total
    out = np.where(exact, (low + high) / 2, low)
    return np.asarray(out.reshape(data.shape[1:]), dtype=np.float64)


def _exact_norm(x: NDArray[np.float64]) -> float:
    """sqrt of the correctly rounded sum of squares (math.fsum): the same bits on any IEEE-754
    platform."""
    return math.sqrt(math.fsum((x * x).tolist()))


def weighted_embedding(
    weights: Sequence[float],
    fulls: Sequence[NDArray[np.float32]],
    *,
    dim: int | None = None,
    duplicate_cos: float = 1.0,
) -> NDArray[np.float32]:
    """The network's embedding of a shard: the weighted mean DIRECTION of ``fulls``, scaled to
    the weighted median of their norms (float32; zeros if the positive weights sum to 0).

    Only entries with weight > 0 take part. Near-duplicates (cosine of the full embeddings >
    ``duplicate_cos``, ``duplicate_groups``) are one voice: each member's weight is divided by
    its group's size. With ``u_i = f_i / ||f_i||``: direction ``d = sum_i w_i u_i``,
    accumulated sequentially in the given (canonical) order in float64; length ``L`` = the
    lower weighted median of the norms ``||f_i||`` (ascending norm, ties by position: the first
    whose cumulative weight reaches half the total, weights as exact fractions); result
    ``float32(L * d / ||d||)`` (zeros if d = 0). Norms and cosines are sqrt of math.fsum (correctly
    rounded), so the result has the same bits on any IEEE-754 platform. A contributor's length
    therefore buys nothing: scaling f_i leaves d unchanged, and moves L only within the range of
    the others' norms while its weight share is below one half. ``dim`` is needed only when
    ``fulls`` is empty. Weights must be finite and >= 0; a zero or non-finite vector is left out.
    """
    if len(weights) != len(fulls):
        raise ValueError(f"{len(weights)} weights for {len(fulls)} embeddings")
    if fulls:
        dim = int(fulls[0].shape[-1])
    if dim is None:
        raise ValueError("weighted_embedding: no embeddings and no dim")
    used: list[tuple[Fraction, NDArray[np.float64], float]] = []
    for w, f in zip(weights, fulls, strict=True):
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"weights must be finite and >= 0, got {w!r}")
        if f.shape != (dim,):
            raise ValueError(f"embedding of shape {f.shape}, expected ({dim},)")
        if w == 0:
            continue
        x = np.asarray(f, dtype=np.float64)
        norm = _exact_norm(x)
        if not (math.isfinite(norm) and norm > 0.0):
            continue  # no direction: it cannot contribute one
        used.append((Fraction(w), x / norm, norm))
    if not used:
        return np.zeros(dim, dtype=np.float32)
    pairs = [
        (a, b)
        for a in range(len(used))
        for b in range(a + 1, len(used))
        if duplicate_cos < 1.0 and math.fsum((used[a][1] * used[b][1]).tolist()) > duplicate_cos
    ]
    share = [Fraction(0)] * len(used)
    for group in _components(len(used), pairs):
        for i in group:
            share[i] = used[i][0] / len(group)
    acc = np.zeros(dim, dtype=np.float64)
    for part, (_, u, _) in zip(share, used, strict=True):
        acc += np.float64(float(part)) * u
    total = sum(share, Fraction(0))
    cumulative = Fraction(0)
    length = 0.0
    for _, i in sorted((norm, i) for i, (_, _, norm) in enumerate(used)):
        cumulative += share[i]
        if 2 * cumulative >= total:
            length = used[i][2]
            break
    size = _exact_norm(acc)
    if size == 0.0:
        return np.zeros(dim, dtype=np.float32)
    return (acc * (length / size)).astype(np.float32)


def round_embeddings(
    weights: NDArray[np.int64],
    encoders: Sequence[bytes],
    fulls: Mapping[tuple[int, bytes], NDArray[np.float32]],
    *,
    dim: int,
    duplicate_cos: float,
) -> tuple[NDArray[np.float32], ...]:
    """Per shard s, ``weighted_embedding`` of the full embeddings ``fulls[(s, encoder)]`` of the
    encoders with ``weights[s, e] > 0`` (the u16 consensus score of a non-outlier cell), in
    canonical encoder order. The one definition of the network's weighted embedding
    (consensus.compute_result)."""
    out = []
    for s in range(weights.shape[0]):
        cols = [e for e in range(len(encoders)) if weights[s, e] > 0]
        out.append(
            weighted_embedding(
                [int(weights[s, e]) for e in cols],
                [fulls[(s, encoders[e])] for e in cols],
                dim=dim,
                duplicate_cos=duplicate_cos,
            )
        )
    return tuple(out)
