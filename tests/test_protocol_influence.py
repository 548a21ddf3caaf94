"""Earned influence: the integer record (protocol/influence.py) and how scoring weighs voices by
it (issue 10)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_scoring import (
    DIM,
    as_shards,
    cosine,
    honest,
    make_world,
    mean_scores,
    network_embeddings,
)

from dlnet.protocol.influence import (
    InfluenceParams,
    InfluenceState,
    apply,
    derive,
    genesis_state,
    scoring_round,
    voice_influence,
)
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.result import U16_MAX, RoundResult
from dlnet.protocol.scoring import score_round, voice_weights, weighted_median

A, B, C, D = (bytes([i]) * 32 for i in range(1, 5))


def result(rnd: int, scores: dict[bytes, int]) -> RoundResult:
    keys = tuple(sorted(scores))
    return RoundResult(
        bytes(32),
        rnd,
        keys,
        tuple(scores[k] for k in keys),
        (False,) * len(keys),
        tuple(scores[k] for k in keys),
        tuple(range(len(keys))),
        (bytes(4),),
        (),
        bytes(32),
        (bytes(32),),
    )


def test_genesis_gives_seeds_full_influence_and_others_none() -> None:
    state = genesis_state([C, A, A])
    assert state == InfluenceState(0, ((A, U16_MAX), (C, U16_MAX)))
    assert state.of(A) == U16_MAX and state.of(B) == 0
    assert genesis_state([]).weights == ()


def test_apply_is_an_integer_ema_and_absence_decays() -> None:
    state = apply(genesis_state([A]), result(1, {A: 40000, B: 60000}))
    # A: (65535 * 3 + 40000) // 4; B: (0 * 3 + 60000) // 4
    assert state.as_dict() == {A: (65535 * 3 + 40000) // 4, B: 15000}
    state = apply(state, result(3, {B: 0, C: 3}))  # A absent: scored 0; C: 3 // 4 = 0, dropped
    assert state.round == 3
    assert state.as_dict() == {A: (((65535 * 3 + 40000) // 4) * 3) // 4, B: 11250}
    with pytest.raises(ValueError, match="after round 3"):
        apply(state, result(3, {A: 1}))


def test_a_record_converges_to_the_score_and_zero_drops_out() -> None:
    state = genesis_state([A])
    for r in range(1, 80):
        state = apply(state, result(r, {A: 50000, B: 0}))
    assert 50000 <= state.of(A) <= 50003
    assert B not in state.as_dict()
    for r in range(80, 200):
        state = apply(state, result(r, {B: 1}))
    assert state.as_dict() == {}


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from([A, B, C, D]), st.integers(0, U16_MAX), max_size=4),
        min_size=1,
        max_size=6,
    ),
    st.permutations(range(6)),
)
def test_derive_is_the_chain_in_round_order_whatever_the_input_order(
    rounds: list[dict[bytes, int]], perm: list[int]
) -> None:
    results = [result(r + 1, s) for r, s in enumerate(rounds)]
    chained = genesis_state([B])
    for res in results:
        chained = apply(chained, res)
    shuffled = [results[i] for i in perm if i < len(results)]
    assert derive([B], shuffled, len(results)) == chained
    assert derive([B], shuffled, len(results)).digest() == chained.digest()
    assert derive([B], shuffled, 1) == apply(genesis_state([B]), results[0])
    assert derive([B], shuffled, 0) == genesis_state([B])


def test_scoring_round_lags_two_and_params_change_the_ema() -> None:
    assert scoring_round(5) == 3
    assert scoring_round(2) == 0  # genesis
    half = InfluenceParams(ema_num=1, ema_den=2, lag=1)
    assert scoring_round(5, half) == 4
    assert apply(genesis_state([]), result(1, {A: 1000}), half).of(A) == 500


def test_a_voice_weighs_its_max_member_never_the_sum() -> None:
    record = {A: 100, B: 100, C: 7}
    assert voice_influence(record, [A, B, C]) == 100
    assert voice_influence(record, [D]) == 0
    assert voice_weights(record, [[A, B], [C], [D]]) == [100, 7, 0]


def test_weighted_median_equal_weights_is_numpy_median_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 7, 8):
        x = rng.normal(size=(n, 16))
        assert np.array_equal(weighted_median(x, [3] * n), np.median(x, axis=0))
        assert np.array_equal(weighted_median(x, [0] * n), np.median(x, axis=0))


def test_weighted_median_values() -> None:
    x = np.array([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0], [4.0, 0.0]])
    # weights 1, 1, 5, 0: row 4 takes no part; cumulative on column 0: 1, 2, 7 of 7 -> 3.0;
    # column 1 sorted 10 (1), 20 (5), 30 (1): 2 * 6 >= 7 at 20.
    assert weighted_median(x, [1, 1, 5, 0]).tolist() == [3.0, 20.0]
    # exactly half: weights 2, 1, 1 -> column 0: cumulative 2 of 4 at 1.0 -> mean(1, 2) = 1.5;
    # column 1 sorted 10 (2), 20 (1), 30 (1): half at 10 -> mean(10, 20) = 15
    assert weighted_median(x[:3], [2, 1, 1]).tolist() == [1.5, 15.0]
    assert float(weighted_median(np.array([5.0, 1.0, 9.0]), [1, 0, 0])) == 5.0


def noisy_copies(world_seed: int, n: int, level: float) -> tuple[object, dict[bytes, list]]:
    """3 honest encoders and ``n`` copies of one different model (a second honest-like map),
    each copy with independent noise of ``level`` of its norm: separate voices at 5 %."""
    world = make_world(world_seed)
    rng = np.random.default_rng(3000 + world_seed)
    encoders = {f"honest-{i}".encode(): honest(world, rng) for i in range(3)}
    other = make_world(world_seed + 100)
    other.slots, other.counts = world.slots, world.counts
    base = honest(other, rng)
    for i in range(n):
        encoders[f"copy-{i}".encode()] = [
            b
            + level
            * np.linalg.norm(b, axis=1, keepdims=True)
            / np.sqrt(DIM)
            * rng.normal(size=b.shape)
            for b in base
        ]
    return world, encoders


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_influence_keeps_copies_without_a_record_from_capturing_the_consensus(seed: int) -> None:
    world, encoders = noisy_copies(seed, 8, 0.05)
    params = ScoringParams()
    shards = as_shards(encoders)
    honest_keys = [k for k in encoders if k.startswith(b"honest")]
    copies = [k for k in encoders if k.startswith(b"copy")]
    # Counted voice by voice (no record), 8 copies with 5 % noise are 8 voices: they win.
    blind = mean_scores(score_round(params, shards, world.counts, list(encoders)))
    assert max(blind[k] for k in copies) > min(blind[k] for k in honest_keys)
    # With the honest encoders' earned record, the copies (record 0) move no statistic.
    record = {k: 50000 for k in honest_keys}
    res = score_round(params, shards, world.counts, list(encoders), influence=record)
    scores = mean_scores(res)
    assert min(scores[k] for k in honest_keys) > max(scores[k] for k in copies)
    weighted = network_embeddings(res, shards, params)
    for s in range(len(world.slots)):
        honest_mean = np.mean([encoders[k][s][0] for k in honest_keys], axis=0)
        assert cosine(weighted[s], honest_mean) > 0.99
    # The honest scores are what they are among themselves: the copies do not move them.
    alone = mean_scores(
        score_round(
            params, as_shards({k: encoders[k] for k in honest_keys}), world.counts, honest_keys
        )
    )
    for k in honest_keys:
        assert abs(scores[k] - alone[k]) < 0.05


def test_equal_influence_everywhere_is_the_unweighted_scoring() -> None:
    world, encoders = noisy_copies(4, 3, 0.05)
    shards = as_shards(encoders)
    params = ScoringParams()
    plain = score_round(params, shards, world.counts, list(encoders))
    for record in ({k: 777 for k in encoders}, {}, {b"stranger" * 4: 65535}):
        res = score_round(params, shards, world.counts, list(encoders), influence=record)
        assert np.array_equal(res.scores, plain.scores)
        assert np.array_equal(res.lof, plain.lof, equal_nan=True)


def test_influence_scoring_is_order_independent() -> None:
    world, encoders = noisy_copies(6, 4, 0.05)
    record = {k: 1000 * (i + 1) for i, k in enumerate(sorted(encoders)) if i % 2 == 0}
    keys = list(encoders)
    runs = []
    for order in itertools.islice(itertools.permutations(keys), 0, 3000, 1000):
        held = [{k: s[k] for k in order} for s in as_shards(encoders)]
        runs.append(score_round(ScoringParams(), held, world.counts, list(order), influence=record))
    for res in runs[1:]:
        assert np.array_equal(res.scores, runs[0].scores)
        assert np.array_equal(res.outliers, runs[0].outliers)
