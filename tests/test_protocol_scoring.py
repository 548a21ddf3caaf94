"""Scoring on synthetic embeddings: DL, LOF on every slot, gates, combined score, determinism.

The synthetic world: text "units" are random vectors; an honest encoder maps the sum of an
input's unit vectors through a shared non-linear map (tanh layer) with a small private
perturbation of its weights and small output noise, so full / mask / inverse are related
non-linearly (DL > 0) and honest encoders agree with each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from dlnet.node.models.kinds import leak_full
from dlnet.protocol.consensus import quantise
from dlnet.protocol.params import DlForm, ScoringParams
from dlnet.protocol.scoring import (
    RoundScores,
    _distances,
    _residuals,
    _round_voices,
    composition_agreement,
    differential_loss,
    distinct_rows,
    dl_factor,
    duplicate_groups,
    effective_rank,
    leave_one_out_medians,
    near_duplicates,
    round_embeddings,
    score_round,
    text_margins,
    weighted_embedding,
    weighted_median,
)

D0, DIM, VOCAB = 32, 64, 200
Cells = list[NDArray[np.float64]]  # one (slots, DIM) array per shard


@dataclasses.dataclass
class World:
    units: NDArray[np.float64]
    w1: NDArray[np.float64]
    w2: NDArray[np.float64]
    slots: list[list[list[int]]]  # per shard, per slot: unit ids
    counts: list[list[int]]


def make_world(seed: int, n_shards: int = 4, n_masks: int = 2) -> World:
    rng = np.random.default_rng(seed)
    units = rng.normal(size=(VOCAB, D0)) / np.sqrt(D0)
    w1 = rng.normal(size=(D0, D0)) * 1.5
    w2 = rng.normal(size=(DIM, D0)) / np.sqrt(D0)
    slots, counts = [], []
    for _ in range(n_shards):
        n = int(rng.integers(8, 14))
        words = [int(w) for w in rng.choice(VOCAB, size=n, replace=False)]
        shard, cnt = [words], [n]
        for _ in range(n_masks):
            hide = {int(i) for i in rng.choice(n, size=n // 2, replace=False)}
            keep = [w for i, w in enumerate(words) if i not in hide]
            hidden = [w for i, w in enumerate(words) if i in hide]
            shard += [keep, hidden]
            cnt += [len(keep), len(hidden)]
        slots.append(shard)
        counts.append(cnt)
    return World(units, w1, w2, slots, counts)


def honest(world: World, rng: np.random.Generator, sigma: float = 0.1) -> Cells:
    p1 = world.w1 + sigma * rng.normal(size=world.w1.shape)
    p2 = world.w2 + sigma * rng.normal(size=world.w2.shape) / np.sqrt(D0)
    out = []
    for shard in world.slots:
        rows = np.array([p2 @ np.tanh(p1 @ world.units[ws].sum(0)) for ws in shard])
        out.append(rows + 0.01 * rng.normal(size=rows.shape))
    return out


def bag(world: World, rng: np.random.Generator, *, mean: bool = False) -> Cells:
    """Additive bag-of-units encoder: sum (or mean) of private random unit vectors."""
    table = rng.normal(size=(VOCAB, DIM)) * 2.0 / np.sqrt(DIM)
    pool = np.mean if mean else np.sum
    return [np.array([pool(table[ws], axis=0) for ws in shard]) for shard in world.slots]


def cheats(world: World, rng: np.random.Generator) -> dict[str, Cells]:
    n_slots = len(world.slots[0])
    scale = 7.0 / np.sqrt(DIM)  # about the honest norm
    constant = rng.normal(size=DIM) * scale
    fabricated = []
    for arr in honest(world, rng):
        a = arr.copy()
        for m in range((n_slots - 1) // 2):
            a[2 * m + 1] = rng.normal(size=DIM) * scale
            a[2 * m + 2] = a[0] - a[2 * m + 1]
        fabricated.append(a)
    return {
        "random": [rng.normal(size=(n_slots, DIM)) * scale for _ in world.slots],
        "zero": [np.zeros((n_slots, DIM)) for _ in world.slots],
        "constant": [np.tile(constant, (n_slots, 1)) for _ in world.slots],
        "additive": bag(world, rng),
        "fabricated": fabricated,
    }


def as_shards(encoders: dict[bytes, Cells]) -> list[dict[bytes, NDArray[np.float32]]]:
    n_shards = len(next(iter(encoders.values())))
    return [{k: v[s].astype(np.float32) for k, v in encoders.items()} for s in range(n_shards)]


def population(seed: int) -> tuple[World, dict[bytes, Cells]]:
    world = make_world(seed)
    rng = np.random.default_rng(1000 + seed)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(6)}
    encoders.update({f"cheat-{k}".encode(): v for k, v in cheats(world, rng).items()})
    return world, encoders


def run(params: ScoringParams, world: World, encoders: dict[bytes, Cells]) -> RoundScores:
    return score_round(params, as_shards(encoders), world.counts, list(encoders))


def mean_scores(res: RoundScores) -> dict[bytes, float]:
    return {k: float(v) for k, v in zip(res.encoders, res.scores.mean(axis=0), strict=True)}


# --- parameters ------------------------------------------------------------------------------


def test_max_slots_follows_the_config_bound() -> None:
    from dlnet.protocol.config import MAX_MASKS_PER_SHARD
    from dlnet.protocol.params import MAX_SLOTS

    assert MAX_SLOTS == 1 + 2 * MAX_MASKS_PER_SHARD


def test_default_params_are_valid() -> None:
    assert ScoringParams().problems() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dl_form", "sum"),
        ("lof_k", 0),
        ("lof_threshold", 1.0),
        ("lof_threshold", float("nan")),
        ("min_consensus_cos", 1.0),
        ("min_consensus_cos", -1.5),
        ("composition_full", 0.0),
        ("zero_norm_eps", float("inf")),
        ("collapse_min_rank", -1.0),
        ("collapse_rel_rank", 1.5),
        ("dl_spread", 1.0),
        ("dl_weight", 1.01),
        ("min_encoders_for_lof", 1),
    ],
)
def test_params_problems_name_the_field(field: str, value: object) -> None:
    params = dataclasses.replace(ScoringParams(), **{field: value})
    problems = params.problems()
    assert [name for name, _ in problems] == [field]
    assert " — " in problems[0][1]
    with pytest.raises(ValueError, match=f"scoring.{field}"):
        score_round(params, [], [], [])


# --- differential loss -------------------------------------------------------------------------


def test_dl_zero_for_additive_and_positive_for_nonlinear() -> None:
    world = make_world(0)
    rng = np.random.default_rng(7)
    for cell, counts in zip(bag(world, rng), world.counts, strict=True):
        assert differential_loss(cell[np.newaxis], counts, "literal") < 1e-12
        assert differential_loss(cell[np.newaxis], counts, "count_weighted") > 0.1
    for cell, counts in zip(bag(world, rng, mean=True), world.counts, strict=True):
        assert differential_loss(cell[np.newaxis], counts, "count_weighted") < 1e-12
        assert differential_loss(cell[np.newaxis], counts, "literal") > 0.1
    for cell, counts in zip(honest(world, rng), world.counts, strict=True):
        assert differential_loss(cell[np.newaxis], counts, "literal") > 0.3
        assert differential_loss(cell[np.newaxis], counts, "count_weighted") > 0.3


def test_dl_literal_formula() -> None:
    f, a, b = np.array([3.0, 4.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0])
    x = np.stack([f, a, b, a, 2 * b])
    # mask 0: ||(1, 2)|| / 5; mask 1: ||(0, 1)|| / 5
    # a cell scaled by 2 has the same DL, each cell its own
    cells = np.stack([x, 2 * x])
    assert differential_loss(cells, [4, 2, 2, 2, 2], "literal") == pytest.approx(
        [(np.sqrt(5) / 5 + 1 / 5) / 2] * 2
    )
    # count weighted, n_A = 1, n_B = 3, n = 4: F - A/4 - 3B/4 = (2, 3)
    assert differential_loss(x[np.newaxis, :3], [4, 1, 3], "count_weighted") == pytest.approx(
        [np.sqrt(13) / 5]
    )
    assert differential_loss(x[np.newaxis, :1], [4], "literal").tolist() == [0.0]


# --- LOF and outliers --------------------------------------------------------------------------


def planted(seed: int, n: int, far: float) -> tuple[RoundScores, int]:
    """n encoders around one point; encoder e01's inverse slot is a vector of norm ``far`` in a
    random direction orthogonal to the point's (unrelated to its peers')."""
    rng = np.random.default_rng(seed)
    center = rng.normal(size=(3, DIM)) * 10.0
    cells = {f"e{i:02d}".encode(): center + rng.normal(size=(3, DIM)) for i in range(n)}
    direction = rng.normal(size=DIM)
    axis = center[2] / np.linalg.norm(center[2])
    direction -= (direction @ axis) * axis
    cells[b"e01"][2] = far * direction / np.linalg.norm(direction)
    res = score_round(ScoringParams(), [cells], [[4, 2, 2]], list(cells))
    return res, res.encoders.index(b"e01")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(7, 12), far=st.floats(100.0, 1000.0))
def test_planted_outlier_gets_high_lof(seed: int, n: int, far: float) -> None:
    res, i = planted(seed, n, far)
    assert res.lof[0, i, 2] > ScoringParams().lof_threshold
    assert res.lof[0, i, 2] == np.max(res.lof[0, :, 2])
    assert (res.lof[0, i, :2] < ScoringParams().lof_threshold).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 12), far=st.floats(100.0, 1000.0))
def test_planted_outlier_is_flagged_and_scores_zero(seed: int, n: int, far: float) -> None:
    """Also for n <= lof_k + 1, where LOF with k = n - 1 is blind: the consensus cosine flags it."""
    res, i = planted(seed, n, far)
    assert res.consensus[0, i, 2] < ScoringParams().min_consensus_cos
    assert res.outliers[0, i]
    assert res.scores[0, i] == 0.0
    assert not res.outliers[0, [j for j in range(n) if j != i]].any()


def test_lof_on_every_slot_catches_fabricated_masks() -> None:
    """The full slot of the cheat is honest: only the mask / inverse slots give it away."""
    world, encoders = population(0)
    no_collapse = ScoringParams(collapse_min_rank=0.0, collapse_rel_rank=0.0)
    res = run(no_collapse, world, encoders)
    i = res.encoders.index(b"cheat-fabricated")
    honest = [res.encoders.index(k) for k in encoders if k.startswith(b"honest")]
    # random masks are density outliers on their slots only; the default cut (6) is for
    # what is obviously wrong, and these are close to it; the too-exact gate cuts them
    assert (res.lof[:, i, 0] < 2.0).all()
    assert (res.lof[:, i, 1:].max(axis=1) > 5.0).all()
    assert res.lof[:, honest, :].max() < 2.0
    assert res.outliers[:, i].all()
    assert res.dl[:, i] == pytest.approx(0.0, abs=1e-6)  # DL alone would call it perfect


# --- honest group against cheats ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dl_form", ["literal", "count_weighted"])
def test_honest_group_outranks_every_cheat(seed: int, dl_form: str) -> None:
    world, encoders = population(seed)
    params = dataclasses.replace(ScoringParams(), dl_form=dl_form)
    res = run(params, world, encoders)
    scores = mean_scores(res)
    honest_scores = [v for k, v in scores.items() if k.startswith(b"honest")]
    cheat_scores = [v for k, v in scores.items() if k.startswith(b"cheat")]
    assert min(honest_scores) > 0.5
    assert min(honest_scores) > max(cheat_scores) + 0.3
    assert ((res.scores >= 0.0) & (res.scores <= 1.0)).all()
    gates = dict(zip(res.encoders, res.gates, strict=True))
    assert gates[b"cheat-zero"] == "zero_norm"
    assert gates[b"cheat-constant"] == "collapse"
    assert all(gates[k] is None for k in encoders if k.startswith(b"honest"))
    why = {k: {row[i] for row in res.cut} for i, k in enumerate(res.encoders)}
    assert why[b"cheat-zero"] == {"zero_norm"} and why[b"cheat-constant"] == {"collapse"}
    assert None not in why[b"cheat-fabricated"]  # random masks (consensus, LOF), DL 0
    assert all(why[k] == {None} for k in encoders if k.startswith(b"honest"))


def network_embeddings(
    res: RoundScores, shards: list[dict[bytes, NDArray[np.float32]]], params: ScoringParams
) -> tuple[NDArray[np.float32], ...]:
    """The weighted embeddings compute_result would make if every validator scored as ``res``."""
    weights = np.array(
        [
            [0 if o else quantise(x) for x, o in zip(row, flags, strict=True)]
            for row, flags in zip(res.scores, res.outliers, strict=True)
        ]
    )
    fulls = {(s, k): held[k][0] for s, held in enumerate(shards) for k in held}
    return round_embeddings(
        weights, res.encoders, fulls, dim=DIM, duplicate_cos=params.duplicate_cos
    )


def cosine(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_weighted_embedding_stays_near_the_honest_mean() -> None:
    world, encoders = population(3)
    shards = as_shards(encoders)
    res = score_round(ScoringParams(), shards, world.counts, list(encoders))
    weighted = network_embeddings(res, shards, ScoringParams())
    for s, held in enumerate(shards):
        fulls = [v[0] for k, v in held.items() if k.startswith(b"honest")]
        honest_mean = np.mean(fulls, axis=0)
        plain_mean = np.mean([v[0] for v in held.values()], axis=0)
        assert cosine(weighted[s], honest_mean) > 0.999
        assert cosine(plain_mean, honest_mean) < 0.99  # the cheats do pull
        norms = [float(np.linalg.norm(f)) for f in fulls]
        assert min(norms) <= float(np.linalg.norm(weighted[s])) <= max(norms)


# --- determinism ---------------------------------------------------------------------------------


def fingerprint(res: RoundScores) -> tuple[object, ...]:
    arrays = (
        res.scores,
        res.outliers,
        res.dl,
        res.lof,
        res.consensus,
        res.composition,
        res.effective_rank,
    )
    return (res.encoders, res.status, res.gates, *(a.tobytes() for a in arrays))


def test_bit_for_bit_repeatable_and_order_independent() -> None:
    world, encoders = population(4)
    first = run(ScoringParams(), world, encoders)
    assert fingerprint(run(ScoringParams(), world, encoders)) == fingerprint(first)
    for seed in range(3):
        keys = list(encoders)
        np.random.default_rng(seed).shuffle(keys)
        shuffled = {k: encoders[k] for k in keys}
        res = score_round(ScoringParams(), as_shards(shuffled), world.counts, keys[::-1])
        assert fingerprint(res) == fingerprint(first)


# --- small n, missing and invalid cells ---------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2])
def test_small_pool_is_unchecked_and_earns_nothing(n: int) -> None:
    world = make_world(5)
    rng = np.random.default_rng(5)
    encoders = {f"h{i}".encode(): honest(world, rng) for i in range(n - 1)}
    encoders[b"random"] = [rng.normal(size=(5, DIM)) for _ in world.slots]
    res = run(ScoringParams(), world, encoders)
    assert (res.lof == 1.0).all() and (res.consensus == 1.0).all()
    assert (res.composition == 1.0).all()
    assert not res.outliers.any()
    assert (res.scores == 0.0).all()  # no reward: nobody checked these cells
    assert {why for row in res.cut for why in row} == {"unchecked"}
    weighted = network_embeddings(res, as_shards(encoders), ScoringParams())
    assert all((w == 0.0).all() for w in weighted)  # and no output is certified


def test_a_pool_of_duplicates_is_one_voice_and_unchecked() -> None:
    """Five near-copies of one random encoder are one voice: a small pool, no reward."""
    world = make_world(6)
    rng = np.random.default_rng(6)
    base = [rng.normal(size=(5, DIM)) for _ in world.slots]
    encoders = {
        f"copy{i}".encode(): [b + 1e-4 * rng.normal(size=b.shape) for b in base] for i in range(5)
    }
    res = run(ScoringParams(), world, encoders)
    assert (res.voice == 0).all()
    assert (res.scores == 0.0).all()
    merged_off = run(dataclasses.replace(ScoringParams(), duplicate_cos=1.0), world, encoders)
    assert (merged_off.voice == np.arange(5)).all()
    assert merged_off.scores.max() > 0.5  # counted as five voices they would vouch for each other


def test_missing_malformed_and_non_finite_cells_score_zero() -> None:
    world, encoders = population(6)
    shards = as_shards(encoders)
    del shards[1][b"honest-0"]
    shards[2][b"honest-1"] = shards[2][b"honest-1"][:3]  # incomplete reveals
    bad = shards[3][b"honest-2"].copy()
    bad[4, 0] = np.nan
    shards[3][b"honest-2"] = bad
    res = score_round(ScoringParams(), shards, world.counts, [*encoders, b"never-revealed"])
    idx = {k: i for i, k in enumerate(res.encoders)}
    assert res.status[1][idx[b"honest-0"]] == "missing"
    assert res.status[2][idx[b"honest-1"]] == "malformed"
    assert res.status[3][idx[b"honest-2"]] == "non_finite"
    assert all(row[idx[b"never-revealed"]] == "missing" for row in res.status)
    for s, name in [(1, b"honest-0"), (2, b"honest-1"), (3, b"honest-2")]:
        assert res.scores[s, idx[name]] == 0.0
        assert res.scores[0, idx[name]] > 0.5  # the other shards still count
    assert not res.outliers[1, idx[b"honest-0"]]  # missing is not judged
    assert res.outliers[3, idx[b"honest-2"]]  # invalid data is


@pytest.mark.parametrize("held", ["nothing", "vectors", "no encoders"])
def test_a_round_without_one_well_shaped_cell_scores_zero(held: str) -> None:
    keys = [bytes([i]) * 32 for i in range(4)]
    shards = [{k: np.ones(5, dtype=np.float32) for k in keys} if held == "vectors" else {}] * 2
    res = score_round(
        ScoringParams(), shards, [[4, 2, 2]] * 2, [] if held == "no encoders" else keys
    )
    assert res.scores.shape == (2, 0 if held == "no encoders" else 4) and not res.scores.any()
    assert {c for row in res.status for c in row} <= {
        "malformed" if held == "vectors" else "missing"
    }


def test_near_zero_norm_is_invalid_not_dl_zero() -> None:
    world, encoders = population(7)
    tiny = [cell.copy() for cell in encoders[b"honest-0"]]
    tiny[0][3] = 1e-9  # one inverse slot collapses to ~0
    encoders[b"honest-0"] = tiny
    res = run(ScoringParams(), world, encoders)
    i = res.encoders.index(b"honest-0")
    assert res.status[0][i] == "zero_norm"
    assert res.scores[0, i] == 0.0 and np.isnan(res.dl[0, i])
    assert res.gates[i] == "zero_norm"


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 9),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_scores_always_in_unit_interval(seed: int, n: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    cells = {bytes([i]): rng.normal(size=(3, 8)) * scale for i in range(n)}
    shards = [{k: v.astype(np.float32) for k, v in cells.items()}]
    res = score_round(ScoringParams(), shards, [[6, 3, 3]], list(cells))
    assert ((res.scores >= 0.0) & (res.scores <= 1.0)).all()
    assert res.scores.shape == (1, n) and res.lof.shape == (1, n, 3)
    # Every flagged cell says why; a cell that passed every cut has no reason.
    for s_row, flags, reasons in zip(res.status, res.outliers, res.cut, strict=True):
        for cell, flagged, why in zip(s_row, flags, reasons, strict=True):
            assert bool(flagged) == (why not in (None, "missing", "unchecked"))
            assert (why is None) == (cell == "ok" and not flagged and why != "unchecked")


def test_effective_rank() -> None:
    assert effective_rank(np.ones((5, 8))) == pytest.approx(1.0)
    assert effective_rank(np.eye(4)) == pytest.approx(4.0)
    assert effective_rank(np.zeros((3, 3))) == 0.0


# --- composition agreement ---------------------------------------------------------------------


def jittered(world: World, rng: np.random.Generator, jitter: float) -> Cells:
    """Honest full and mask embeddings, inverse forged as full - mask + noise of jitter * ||F||:
    DL = jitter, enough to pass the too-exact gate."""
    out = []
    for arr in honest(world, rng):
        a = arr.copy()
        for m in range((a.shape[0] - 1) // 2):
            eps = rng.normal(size=DIM)
            a[2 * m + 2] = (
                a[0] - a[2 * m + 1] + eps * jitter * np.linalg.norm(a[0]) / np.linalg.norm(eps)
            )
        out.append(a)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("jitter", [0.3, 0.6])
def test_forged_inverse_with_jitter_fails_composition_agreement(seed: int, jitter: float) -> None:
    """The forgery DL cannot see: a DL in the honest range, a full slot that is honest, but a
    residual with nothing of the honest encoders' residuals in it."""
    world, encoders = population(seed)
    encoders[b"cheat-jittered"] = jittered(world, np.random.default_rng(seed + 50), jitter)
    res = run(ScoringParams(), world, encoders)
    i = res.encoders.index(b"cheat-jittered")
    honest_idx = [j for j, k in enumerate(res.encoders) if k.startswith(b"honest")]
    median_dl = float(np.median(res.dl[:, honest_idx]))
    assert (res.dl[:, i] > ScoringParams().min_dl_ratio * median_dl).all()  # not too exact
    assert (res.composition[:, honest_idx] > 0.8).all()
    assert (np.abs(res.composition[:, i]) < 0.3).all()
    scores = mean_scores(res)
    assert (
        scores[b"cheat-jittered"]
        < min(scores[k] for k in encoders if k.startswith(b"honest")) - 0.3
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t", [0.1, 0.3, 1.0])
def test_leaking_the_full_into_the_halves_does_not_pay(seed: int, t: float) -> None:
    world, encoders = population(seed)
    base = honest(world, np.random.default_rng(seed + 80))
    # The full leaked into the halves (the testnet's leaky@t): mask and inverse + t * F, full +
    # 2t * F; F - A - B, so the composition agreement, is unchanged and DL shrinks by 1 + 2t.
    encoders[b"leaky"] = [leak_full(cell.astype(np.float32), t) for cell in base]
    res = run(ScoringParams(), world, encoders)
    i = res.encoders.index(b"leaky")
    honest_idx = [j for j, k in enumerate(res.encoders) if k.startswith(b"honest")]
    assert (res.composition[:, i] > 0.8).all()  # the residual is an honest one
    assert (res.dl[:, i] < np.min(res.dl[:, honest_idx], axis=1)).all()  # a smaller DL
    scores = mean_scores(res)
    assert scores[b"leaky"] < min(scores[k] for k in encoders if k.startswith(b"honest"))


@settings(max_examples=200, deadline=None)
@given(
    median=st.floats(1e-3, 10.0),
    ratio=st.floats(1.0, 100.0),
    weight=st.floats(0.0, 1.0),
    spread=st.floats(1.01, 20.0),
)
def test_dl_factor_peaks_at_the_median_and_falls_either_way(
    median: float, ratio: float, weight: float, spread: float
) -> None:
    params = dataclasses.replace(ScoringParams(), dl_weight=weight, dl_spread=spread)
    above = dl_factor(params, median * ratio, median)
    below = dl_factor(params, median / ratio, median)
    assert dl_factor(params, median, median) == 1.0
    assert 1.0 - weight <= above <= 1.0 and 1.0 - weight <= below <= 1.0
    assert above == pytest.approx(below, abs=1e-9)
    assert dl_factor(params, median * ratio * 1.5, median) <= above
    if ratio >= spread:  # median * ratio / median may round just below ratio
        assert above == pytest.approx(1.0 - weight, abs=1e-12)


def test_dl_factor_edges() -> None:
    params = ScoringParams()
    assert dl_factor(params, 0.0, 0.0) == 1.0
    assert dl_factor(params, 0.0, 0.4) == 1.0 - params.dl_weight
    assert dl_factor(params, 0.4, 0.0) == 1.0 - params.dl_weight
    assert dl_factor(params, 0.8, 0.4) == 1.0 - params.dl_weight / 3  # ratio 2 of spread 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_composition_agreement_falls_with_added_noise(seed: int) -> None:
    """Graded, not pass/fail: honest outputs plus noise of growing size score lower and lower."""
    world = make_world(seed)
    rng = np.random.default_rng(seed + 70)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(6)}
    for level in (0.1, 0.3, 0.6):
        cells = honest(world, rng)
        encoders[f"noisy-{level}".encode()] = [
            c
            + level
            * rng.normal(size=c.shape)
            * np.linalg.norm(c, axis=1, keepdims=True)
            / np.sqrt(DIM)
            for c in cells
        ]
    res = run(ScoringParams(), world, encoders)
    agreement = {k: float(np.mean(res.composition[:, i])) for i, k in enumerate(res.encoders)}
    honest_min = min(v for k, v in agreement.items() if k.startswith(b"honest"))
    assert honest_min > agreement[b"noisy-0.1"] > agreement[b"noisy-0.3"] > agreement[b"noisy-0.6"]
    scores = mean_scores(res)
    assert scores[b"noisy-0.1"] > scores[b"noisy-0.3"] > scores[b"noisy-0.6"]


def test_composition_agreement_exact_values() -> None:
    r = np.array([[[1.0, 0.0]], [[2.0, 0.0]], [[3.0, 0.0]], [[0.0, 4.0]], [[0.0, 0.0]]])
    # unit rows (1,0) x3, (0,1), 0. Without row 0: median (0.5, 0) -> consensus (1, 0); without
    # row 3: (1, 0); without the zero row: (1, 0).
    assert composition_agreement(r).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    # Each of two sees only the other; one alone is its own reference.
    assert composition_agreement(r[[0, 3]]).tolist() == [0.0, 0.0]
    assert composition_agreement(r[:1]).tolist() == [1.0]
    # Only the kept voices (those the cuts passed) are a reference: without rows 0-2, every
    # row is measured against row 3 alone, and row 3, the only one kept, against itself.
    kept = [False, False, False, True, False]
    assert composition_agreement(r, kept=kept).tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    # None kept: no reference, no agreement.
    assert composition_agreement(r, kept=[False] * 5).tolist() == [0.0] * 5
    assert composition_agreement(np.zeros((3, 0, 4))).tolist() == [1.0, 1.0, 1.0]
    assert composition_agreement(np.zeros((3, 2, 4))).tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    masks=st.integers(1, 3),
    scale=st.floats(1e-3, 1e3),
)
def test_composition_agreement_is_a_scale_free_symmetric_cosine(
    seed: int, n: int, masks: int, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n, masks, 6))
    out = composition_agreement(r)
    assert out.shape == (n,)
    assert ((out >= -1.0 - 1e-12) & (out <= 1.0 + 1e-12)).all()
    # A peer's residual size says nothing: rescaling it changes no agreement.
    scaled = r.copy()
    scaled[0] *= scale
    assert composition_agreement(scaled) == pytest.approx(out, abs=1e-12)
    # Peers are a set: permuting them permutes the result, bit for bit.
    perm = rng.permutation(n)
    assert composition_agreement(r[perm]).tobytes() == out[perm].tobytes()
    # Peers that all fail the same way agree fully (one alone is its own reference).
    same = np.repeat(r[:1], n, axis=0) * rng.uniform(0.5, 2.0, size=(n, 1, 1))
    assert composition_agreement(same) == pytest.approx(np.ones(n))
    # Each peer is measured against the others only.
    for e in range(n):
        others = np.delete(r, e, axis=0) if n > 1 else r
        expected = 0.0
        for m in range(masks):
            u = r[e, m] / np.linalg.norm(r[e, m])
            rows = others[:, m] / np.linalg.norm(others[:, m], axis=1, keepdims=True)
            c = weighted_median(rows, [1] * len(rows))
            size = np.linalg.norm(c)
            expected += float(u @ c / size) if size > 0 else 0.0
        assert out[e] == pytest.approx(expected / masks, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    d=st.integers(1, 12),
    coarse=st.booleans(),
    weighting=st.sampled_from(["equal", "some zero", "all zero", "one positive", "unequal"]),
)
def test_leave_one_out_medians_are_the_median_of_the_others(
    seed: int, n: int, d: int, coarse: bool, weighting: str
) -> None:
    """The fast path (one sort per coordinate) against its definition, bit for bit but for the
    sign of zero: ties (coarse values, signed zeros) and every weight rule of weighted_median."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if coarse:
        x = np.round(x) * rng.choice([-1.0, 1.0], size=x.shape)  # many ties, -0.0 among them
    weights = {
        "equal": [3] * n,
        "some zero": [int(v) for v in rng.integers(0, 3, size=n)],
        "all zero": [0] * n,
        "one positive": [5 if i == n // 2 else 0 for i in range(n)],
        "unequal": [int(v) for v in rng.integers(1, 65536, size=n)],
    }[weighting]
    got = leave_one_out_medians(x, weights)
    assert got.shape == (n, d)
    for v in range(n):
        rest = [w for i, w in enumerate(weights) if i != v]
        want = weighted_median(np.delete(x, v, axis=0), rest) + 0.0 if n > 1 else np.zeros(d)
        assert got[v].tobytes() == want.tobytes(), (v, weights)


# --- weighted embedding --------------------------------------------------------------------------


def test_weighted_embedding_exact_values() -> None:
    fulls = [np.array([3.0, 4.0], np.float32), np.array([0.0, -10.0], np.float32)]
    # directions (0.6, 0.8) and (0, -1), weights 1 and 3: d = (0.6, -2.2); norms 5 (weight 1)
    # and 10 (weight 3): the weighted median norm is 10.
    out = weighted_embedding([1, 3], fulls)
    assert out.dtype == np.float32
    expected = np.array([0.6, -2.2]) * 10.0 / np.hypot(0.6, -2.2)
    assert out.tolist() == expected.astype(np.float32).tolist()
    assert np.linalg.norm(weighted_embedding([3, 1], fulls)) == pytest.approx(5.0)
    assert weighted_embedding([0, 0], fulls).tolist() == [0.0, 0.0]
    assert weighted_embedding([], [], dim=3).tolist() == [0.0, 0.0, 0.0]
    assert weighted_embedding([1, 1], [fulls[0], -fulls[0]]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        weighted_embedding([1, -1], fulls)
    with pytest.raises(ValueError):
        weighted_embedding([1], fulls)


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(st.integers(0, 65535), min_size=1, max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_embedding_is_a_median_length_mean_direction(
    weights: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    fulls = [(rng.normal(size=16) * rng.uniform(0.1, 10)).astype(np.float32) for _ in weights]
    out = weighted_embedding(weights, fulls)
    assert out.tobytes() == weighted_embedding(weights, fulls).tobytes()
    used = [(w, f.astype(np.float64)) for w, f in zip(weights, fulls, strict=True) if w > 0]
    if not used:
        assert (out == 0.0).all()
        return
    direction = sum(w * f / np.linalg.norm(f) for w, f in used)
    assert cosine(out, direction) == pytest.approx(1.0, abs=1e-6)
    norms = sorted((float(np.linalg.norm(f)), w) for w, f in used)
    total, cumulative = sum(w for w, _ in used), 0
    for norm, w in norms:
        cumulative += w
        if 2 * cumulative >= total:
            assert float(np.linalg.norm(out)) == pytest.approx(norm, rel=1e-5)
            break


def share_of(out: NDArray[np.float32], fulls: list[NDArray[np.float64]], i: int) -> float:
    """Contributor i's share of ``out``: in the least-squares decomposition
    out = sum_j a_j f_j, |a_i| ||f_i|| / sum_j |a_j| ||f_j||."""
    basis = np.stack(fulls, axis=1)
    coef = np.linalg.lstsq(basis, out.astype(np.float64), rcond=None)[0]
    parts = np.abs(coef) * np.linalg.norm(basis, axis=0)
    return float(parts[i] / parts.sum())


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(1, 65535), min_size=3, max_size=8),
    factor=st.floats(1e-3, 1e6),
    pick=st.integers(0, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_length_cannot_buy_weight(weights: list[int], factor: float, pick: int, seed: int) -> None:
    """Scaling one contributor by any factor leaves its share of the output at its weight share
    (its length buys nothing) and the output's length inside the others' lengths."""
    rng = np.random.default_rng(seed)
    i = pick % len(weights)
    fulls = [rng.normal(size=32) * rng.uniform(0.5, 2.0) for _ in weights]
    scaled = [f * factor if j == i else f for j, f in enumerate(fulls)]
    out = weighted_embedding(weights, [f.astype(np.float32) for f in fulls])
    out_scaled = weighted_embedding(weights, [f.astype(np.float32) for f in scaled])
    weight_share = weights[i] / sum(weights)
    assert share_of(out, fulls, i) == pytest.approx(weight_share, abs=1e-4)
    assert share_of(out_scaled, scaled, i) == pytest.approx(weight_share, abs=1e-4)
    assert cosine(out, out_scaled) == pytest.approx(1.0, abs=1e-6)
    if 2 * weights[i] < sum(weights):  # a minority cannot set the length either
        others = [float(np.linalg.norm(f)) for j, f in enumerate(fulls) if j != i]
        assert min(others) * (1 - 1e-6) <= np.linalg.norm(out_scaled) <= max(others) * (1 + 1e-6)


def test_near_duplicates_share_one_voice_in_the_weighted_embedding() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=32), rng.normal(size=32)
    copies = [a + 1e-5 * rng.normal(size=32) for _ in range(8)]
    fulls = [f.astype(np.float32) for f in [b, *copies]]
    out = weighted_embedding([1] * 9, fulls, duplicate_cos=0.999)
    assert cosine(out, a / np.linalg.norm(a) + b / np.linalg.norm(b)) > 0.9999
    counted = weighted_embedding([1] * 9, fulls, duplicate_cos=1.0)  # merging off: 8 votes to 1
    assert cosine(counted, a) > cosine(out, a) + 0.1


# --- near-duplicates ---------------------------------------------------------------------------


def cheap_copies(world: World, rng: np.random.Generator, n: int) -> dict[bytes, Cells]:
    """n copies of one cheap model (a mean of static unit vectors), each with tiny noise."""
    base = bag(world, rng, mean=True)
    scale = float(np.mean([np.linalg.norm(c) / np.sqrt(c.shape[0]) for c in base]))
    return {
        f"copy-{i}".encode(): [
            c + 1e-3 * scale / np.sqrt(DIM) * rng.normal(size=c.shape) for c in base
        ]
        for i in range(n)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_duplicate_copies_do_not_define_the_consensus(seed: int) -> None:
    world = make_world(seed)
    rng = np.random.default_rng(2000 + seed)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(3)}
    encoders.update(cheap_copies(world, rng, 8))
    params = ScoringParams()
    res = run(params, world, encoders)
    scores = mean_scores(res)
    copies = [k for k in encoders if k.startswith(b"copy")]
    assert all(
        (res.voice[:, res.encoders.index(k)] == res.encoders.index(copies[0])).all() for k in copies
    )
    honest_scores = [v for k, v in scores.items() if k.startswith(b"honest")]
    assert min(honest_scores) > max(scores[k] for k in copies)
    weighted = network_embeddings(res, as_shards(encoders), params)
    honest_means = [
        np.mean([encoders[f"honest-{i}".encode()][s][0] for i in range(3)], axis=0)
        for s in range(len(world.slots))
    ]
    # The copies are one voice of four: a quarter of the direction at most.
    near = [cosine(w, m) for w, m in zip(weighted, honest_means, strict=True)]
    assert min(near) > 0.98
    # Counted one by one, the copies would define the consensus and outrank the honest.
    by_one = dataclasses.replace(params, duplicate_cos=1.0)
    counted_res = run(by_one, world, encoders)
    counted = mean_scores(counted_res)
    assert max(counted[k] for k in copies) > min(
        v for k, v in counted.items() if k.startswith(b"honest")
    )
    drifted = network_embeddings(counted_res, as_shards(encoders), by_one)
    assert all(cosine(d, m) < c for d, m, c in zip(drifted, honest_means, near, strict=True))


def test_copies_do_not_move_the_collapse_gates_median() -> None:
    """8 near-copies of a high-rank random encoder: counted one by one they set the median
    effective rank and gate the honest encoders (a strict collapse_rel_rank of 0.9); as one
    voice they do not."""
    world = make_world(0)
    rng = np.random.default_rng(9)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(3)}
    base = [rng.normal(size=(5, DIM)) for _ in world.slots]
    for i in range(8):
        encoders[f"copy-{i}".encode()] = [b + 1e-4 * rng.normal(size=b.shape) for b in base]
    strict = dataclasses.replace(ScoringParams(), collapse_rel_rank=0.9)
    res = run(strict, world, encoders)
    gates = dict(zip(res.encoders, res.gates, strict=True))
    assert all(gates[f"honest-{i}".encode()] is None for i in range(3))
    counted = run(dataclasses.replace(strict, duplicate_cos=1.0), world, encoders)
    gates = dict(zip(counted.encoders, counted.gates, strict=True))
    assert all(gates[f"honest-{i}".encode()] == "collapse" for i in range(3))


def test_duplicate_groups_are_the_same_partition_in_any_order() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(size=(4, 3, DIM))
    rows = [base[i % 4] + (1e-5 if i >= 4 else 0.0) * rng.normal(size=(3, DIM)) for i in range(9)]
    units = np.stack([r / np.linalg.norm(r, axis=-1, keepdims=True) for r in rows])
    groups = duplicate_groups(near_duplicates(units, 0.999))
    assert groups == [[0, 4, 8], [1, 5], [2, 6], [3, 7]]
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(9)
        shuffled = duplicate_groups(near_duplicates(units[perm], 0.999))
        assert sorted(sorted(int(perm[i]) for i in g) for g in shuffled) == groups
    assert duplicate_groups(near_duplicates(units, 1.0)) == [[i] for i in range(9)]
    # One slot far apart is enough to keep two cells apart: near on every slot, not on average.
    units[8, 2] = -units[0, 2]
    groups = duplicate_groups(near_duplicates(units, 0.999))
    assert [0, 4] in groups and [8] in groups


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda n: st.lists(
            st.lists(st.sampled_from([-1.5, -0.0, 0.0, 0.25, 1.0, 3.0]), min_size=n, max_size=n),
            max_size=10,
        )
    )
)
def test_distinct_rows_is_np_unique_over_rows(rows: list[list[float]]) -> None:
    """The scoring's fast distinct rows equal np.unique(axis=0), order and inverse alike
    (few values per column, so equal rows and ties on leading columns are common)."""
    x = np.array(rows, dtype=np.float64).reshape(len(rows), -1 if rows else 0)
    if not rows:
        x = np.zeros((0, 3))
    distinct, inverse = distinct_rows(x)
    want, want_inverse = np.unique(x, axis=0, return_inverse=True)
    assert distinct.shape == want.shape and distinct.tobytes() == want.tobytes()  # +-0.0 too
    assert np.array_equal(inverse, want_inverse.ravel())


# --- fast paths against their straightforward definitions (bit for bit) -------------------------

COARSE = np.array([-1.5, -0.0, 0.0, 0.25, 1.0, 3.0])


def sample_rows(seed: int, n: int, dim: int, coarse: bool) -> NDArray[np.float64]:
    """n rows: few values per column (ties, +-0.0) or normal ones, with repeated rows."""
    rng = np.random.default_rng(seed)
    x = rng.choice(COARSE, size=(n, dim)) if coarse else rng.normal(size=(n, dim))
    for i in range(1, n):
        if rng.random() < 0.3:
            x[i] = x[int(rng.integers(0, i))]
    flip = (x == 0.0) & (rng.random(size=x.shape) < 0.5)
    x[flip] = -x[flip]  # +0.0 <-> -0.0 in a copy
    return x


def reference_norms(x: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = np.sqrt(np.sum(x * x, axis=-1))
    return out


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 24), st.integers(1, 300), st.booleans())
def test_distances_are_the_row_by_row_formula(seed: int, n: int, dim: int, coarse: bool) -> None:
    x = sample_rows(seed, n, dim, coarse)
    want = np.stack([reference_norms(x - row) for row in x]) if n else np.zeros((0, 0))
    got = _distances(x)
    assert got.shape == want.shape and got.tobytes() == want.tobytes()


def test_distances_on_rows_longer_than_numpys_summation_buffer() -> None:
    x = sample_rows(3, 4, 10_000, False)
    want = np.stack([reference_norms(x - row) for row in x])
    assert _distances(x).tobytes() == want.tobytes()


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 16),
    st.sampled_from([1, 3, 5]),
    st.integers(1, 48),
    st.sampled_from([0.5, 0.9, 0.99, 0.999, 1.0]),
)
def test_near_duplicates_is_the_pair_loop(
    seed: int, n: int, slots: int, dim: int, duplicate_cos: float
) -> None:
    """Rows near each other on some slots only, with noise around every threshold."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, slots, dim))
    for i in range(1, n):
        if rng.random() < 0.6:
            src = int(rng.integers(0, i))
            noise = 10 ** rng.uniform(-4, 0, size=(slots, 1)) * rng.normal(size=(slots, dim))
            x[i] = x[src] + noise / np.sqrt(dim)
    units = x / reference_norms(x)[..., np.newaxis]
    want = np.array(
        [
            [
                a != b and bool(np.all(np.sum(units[a] * units[b], axis=-1) > duplicate_cos))
                for b in range(n)
            ]
            for a in range(n)
        ],
        dtype=np.bool_,
    ).reshape(n, n)
    assert np.array_equal(near_duplicates(units, duplicate_cos), want)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(0, 14),
    st.sampled_from([0.9, 0.999, 1.0]),
)
def test_round_voices_is_the_pair_loop(
    seed: int, n_shards: int, n_enc: int, duplicate_cos: float
) -> None:
    """Encoders one voice iff they share an ok shard and are near-duplicates on every shard
    where both are ok (copies that differ on one shard, or share no shard, are apart)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_shards, n_enc, 3, 8))
    for e in range(1, n_enc):
        if rng.random() < 0.6:
            src = int(rng.integers(0, e))
            x[:, e] = x[:, src] + 1e-4 * rng.normal(size=x[:, e].shape)
            if rng.random() < 0.3:
                x[int(rng.integers(0, n_shards)), e] = rng.normal(size=(3, 8))
    units = x / reference_norms(x)[..., np.newaxis]
    ok = rng.random(size=(n_shards, n_enc)) < 0.7
    ok_cells = [[e for e in range(n_enc) if ok[s, e]] for s in range(n_shards)]
    near = [near_duplicates(units[s, cells], duplicate_cos) for s, cells in enumerate(ok_cells)]
    members = [e for e in range(n_enc) if ok[:, e].any()]
    parent = {e: e for e in members}

    def root(e: int) -> int:
        while parent[e] != e:
            e = parent[e]
        return e

    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            both = [s for s in range(n_shards) if ok[s, a] and ok[s, b]]
            if both and all(
                np.all(np.sum(units[s, a] * units[s, b], axis=-1) > duplicate_cos) for s in both
            ):
                ra, rb = root(a), root(b)
                parent[max(ra, rb)] = min(ra, rb)
    want: dict[int, list[int]] = {}
    for e in members:
        want.setdefault(root(e), []).append(e)
    assert _round_voices(ok_cells, near) == [want[r] for r in sorted(want)]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 24),
    st.booleans(),
    st.sampled_from([0, 1, 3]),
    st.booleans(),
)
def test_equal_weight_median_is_numpys_bit_for_bit(
    seed: int, n: int, dim: int, coarse: bool, weight: int, leave_out: bool
) -> None:
    """Signed zeros and ties included; rows of weight 0 left out."""
    x = sample_rows(seed, n, dim, coarse)
    weights = [weight] * n
    kept = list(range(n))
    if leave_out and weight and n > 1:
        weights[0], kept = 0, kept[1:]
    want = np.median(x[kept], axis=0)
    assert weighted_median(x, weights).tobytes() == want.tobytes()
    assert weighted_median(x[:, 0], weights).tobytes() == np.median(x[kept, 0]).tobytes()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.sampled_from([1, 3, 5, 7]),
    st.integers(1, 64),
    st.sampled_from(["literal", "count_weighted"]),
)
def test_stacked_dl_and_residuals_are_the_per_cell_loop(
    seed: int, n: int, slots: int, dim: int, form: DlForm
) -> None:
    rng = np.random.default_rng(seed)
    cells = rng.normal(size=(n, slots, dim)) * 10 ** rng.uniform(-3, 3, size=(n, 1, 1))
    counts = [int(rng.integers(2, 40))]
    for _ in range((slots - 1) // 2):
        a = int(rng.integers(1, counts[0]))
        counts += [a, counts[0] - a]
    want_dl, want_rows = [], []
    for x in cells:
        full_norm = float(reference_norms(x[0]))
        total = 0.0
        for m in range((slots - 1) // 2):
            a, b = x[2 * m + 1], x[2 * m + 2]
            if form == "count_weighted":
                a = a * (counts[2 * m + 1] / counts[0])
                b = b * (counts[2 * m + 2] / counts[0])
            want_rows.append(x[0] - a - b)
            total += float(reference_norms(want_rows[-1])) / full_norm
        want_dl.append(total / ((slots - 1) // 2) if slots > 1 else 0.0)
    assert differential_loss(cells, counts, form).tolist() == want_dl
    residuals = _residuals(cells, counts, form)
    assert residuals.shape == (n, (slots - 1) // 2, dim)
    assert residuals.tobytes() == np.array(want_rows).tobytes()


def test_near_duplicates_need_a_cosine_strictly_above_the_threshold() -> None:
    # cosine exactly 0.5 on slot 1, 1.0 on slot 0
    units = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.5, np.sqrt(0.75)]]])
    assert not near_duplicates(units, 0.5).any()
    assert not near_duplicates(units[:, ::-1], 0.5).any()
    assert near_duplicates(units, 0.4999).tolist() == [[False, True], [True, False]]


# --- the probe factor (§2.8) -----------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 5), st.floats(0.0, 1.0))
def test_probe_factor_multiplies_every_passing_cell(seed: int, factor: float) -> None:
    world, encoders = population(seed)
    shards, keys = as_shards(encoders), list(encoders)
    plain = score_round(ScoringParams(), shards, world.counts, keys)
    one = b"honest-0"
    probed = score_round(
        ScoringParams(), shards, world.counts, keys, probe={**dict.fromkeys(keys, 1.0), one: factor}
    )
    i = plain.encoders.index(one)
    assert np.array_equal(probed.scores[:, i], plain.scores[:, i] * factor)
    assert np.array_equal(np.delete(probed.scores, i, 1), np.delete(plain.scores, i, 1))
    assert np.array_equal(probed.outliers, plain.outliers)  # the probe grades, never cuts


def test_an_encoder_without_a_probe_grade_scores_zero() -> None:
    world, encoders = population(0)
    keys = list(encoders)
    res = score_round(
        ScoringParams(), as_shards(encoders), world.counts, keys, probe={b"honest-1": 1.0}
    )
    scores = mean_scores(res)
    assert scores[b"honest-1"] > 0.5
    assert all(v == 0.0 for k, v in scores.items() if k != b"honest-1")


def test_composition_factor_is_the_encoders_mean_over_its_passing_cells() -> None:
    world, encoders = population(1)
    res = run(ScoringParams(), world, encoders)
    params = ScoringParams()
    for e, key in enumerate(res.encoders):
        passing = [s for s in range(len(world.slots)) if res.scores[s, e] > 0]
        if not passing:
            continue
        mean = sum(float(res.composition[s, e]) for s in passing) / len(passing)
        factor = min(max(mean, 0.0) / params.composition_full, 1.0)
        for s in passing:
            expected = factor * dl_factor(params, float(res.dl[s, e]), float(res.median_dl[s]))
            assert res.scores[s, e] == pytest.approx(expected, rel=1e-12), key


# --- the text cut ----------------------------------------------------------------------------


def rotated(cells: Cells) -> Cells:
    """An encoder that sends, for each shard, its embedding of the next shard's texts."""
    return [cells[(s + 1) % len(cells)] for s in range(len(cells))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_embedding_of_another_text_is_cut(seed: int) -> None:
    world = make_world(seed)
    rng = np.random.default_rng(seed + 300)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(6)}
    encoders[b"other-text"] = rotated(honest(world, rng))
    res = run(ScoringParams(), world, encoders)
    i = res.encoders.index(b"other-text")
    assert (res.text_margin[:, i] < 0).all() and res.outliers[:, i].all()
    assert (res.scores[:, i] == 0).all()
    honest_cols = [j for j, k in enumerate(res.encoders) if k.startswith(b"honest")]
    assert (res.text_margin[:, honest_cols] > 0.05).all()
    assert not res.outliers[:, honest_cols].any()
    # It is the text cut that cuts it: with the absolute cuts off, the cell passes without the
    # text cut, and the text cut, measuring the same margins, takes it.
    loose = ScoringParams(min_consensus_cos=-1.0, lof_threshold=1e9)
    on = run(loose, world, encoders)
    off = run(replace(loose, min_text_margin=-2.0), world, encoders)
    assert on.outliers[:, i].all() and not off.outliers[:, i].any()
    assert np.array_equal(off.text_margin, on.text_margin)
    assert {row[i] for row in on.cut} == {"text"} and {row[i] for row in off.cut} == {None}


def test_two_shards_of_one_text_are_not_each_others_other_text() -> None:
    world = make_world(4)
    world.slots[1], world.counts[1] = world.slots[0], world.counts[0]
    rng = np.random.default_rng(4)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(6)}
    encoders[b"other-text"] = rotated(honest(world, rng))
    res = run(ScoringParams(), world, encoders)
    honest_cols = [j for j, k in enumerate(res.encoders) if k.startswith(b"honest")]
    assert not res.outliers[:, honest_cols].any()
    assert (res.text_margin[:, honest_cols] > 0.05).all()
    # Shard 0's rotated cell is shard 1's text — the same text: it is not another text there.
    i = res.encoders.index(b"other-text")
    assert res.text_margin[0, i] > 0.2 and (res.text_margin[1:, i] < 0).all()


def test_a_round_of_one_checked_shard_has_no_other_text() -> None:
    world = make_world(6, n_shards=1)
    rng = np.random.default_rng(6)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(5)}
    res = run(ScoringParams(), world, encoders)
    assert np.isinf(res.text_margin).all() and not res.outliers.any()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cells=st.integers(1, 6),
    slots=st.integers(1, 5),
    n_others=st.integers(0, 4),
    copy_centre=st.booleans(),
    rank=st.integers(1, 6),
)
def test_text_margins_are_the_slot_by_slot_formula(
    seed: int, cells: int, slots: int, n_others: int, copy_centre: bool, rank: int
) -> None:
    rng = np.random.default_rng(seed)

    def unit(*shape: int) -> NDArray[np.float64]:
        x = rng.normal(size=(*shape, 8))
        out: NDArray[np.float64] = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return out

    units, centre = unit(cells, slots), unit(slots)
    others = [unit(slots) for _ in range(n_others)]
    got = text_margins(units, centre, others, 0.9, rank)
    want = np.full(cells, np.inf)
    for e in range(cells):
        per_slot = []
        for j in range(slots):
            rivals = [
                float(np.sum(units[e, j] * row))
                for other in others
                if float(np.sum(centre[0] * other[0])) <= 0.9
                for row in other
                if float(np.sum(centre[j] * row)) <= 0.9
            ]
            own = float(np.sum(units[e, j] * centre[j]))
            per_slot.append(own - max(rivals) if rivals else np.inf)
        want[e] = sorted(per_slot)[min(rank, slots) - 1]
    assert got.tobytes() == want.tobytes()
    # The other shards are a set; a copy of this shard is the same item, not another text.
    assert text_margins(units, centre, others[::-1], 0.9, rank).tobytes() == got.tobytes()
    if copy_centre:
        same = text_margins(units, centre, [*others, centre.copy()], 0.9, rank)
        assert same.tobytes() == got.tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_two_honest_encoders_among_more_cheats_keep_their_reference(seed: int) -> None:
    """Five cheats against two honest encoders: the references of the text cut and of the
    composition agreement are the voices that passed the cuts, not the cheats that did not
    (with an all-voice reference the honest encoders lost cells and half their score)."""
    world = make_world(seed)
    rng = np.random.default_rng(seed)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(2)}
    encoders.update({f"cheat-{k}".encode(): v for k, v in cheats(world, rng).items()})
    res = run(ScoringParams(), world, encoders)
    scores = mean_scores(res)
    assert min(scores[b"honest-0"], scores[b"honest-1"]) > 0.9, scores
    assert all(v == 0.0 for k, v in scores.items() if k.startswith(b"cheat")), scores
