"""Probes (protocol/probes.py, docs/PROTOCOL.md §2.8): the pairing, the halves, the grade,
the pooled factor, and the two messages that carry a probe and its key."""

from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import hidden_count, split_units
from dlnet.protocol.params import ScoringParams
from dlnet.protocol.probes import (
    GRADE_SCALE,
    TEXT_BYTES,
    build_probe,
    key_hash,
    pairing,
    probe_factor,
    probe_grade,
    probe_seed,
    probe_shard,
    prober,
)
from dlnet.protocol.wire import (
    Kind,
    Probe,
    ProbeKey,
    Reject,
    RejectReason,
    decode,
    encode,
    make_embedding,
    max_message_bytes,
    sign_commit,
    sign_probe,
    sign_probe_key,
)

VALIDATORS = [SigningKey.from_seed(sha256(b"probe validator%d" % i)) for i in range(3)]
ENCODER = SigningKey.from_seed(sha256(b"probe encoder"))
WORDS = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
SOURCE = st.lists(st.lists(WORDS, min_size=2, max_size=12).map(" ".join), min_size=2, max_size=8)


def make_cfg(**scoring: Any) -> NetworkConfig:
    return default_config(
        [ValidatorEntry(k.public_key, 10) for k in VALIDATORS],
        1_700_000_000,
        dataset_sha256=sha256(b"data"),
        scoring=ScoringParams(**scoring),
    )


def key_of(cfg: NetworkConfig, r: int) -> SigningKey:
    who = prober(cfg, r)
    return next(k for k in VALIDATORS if k.public_key == who)


@given(st.binary(min_size=32, max_size=32), st.integers(1, 32))
def test_pairing_places_every_half_once(seed: bytes, count: int) -> None:
    pairs = pairing(seed, count)
    assert len(pairs) == count
    assert sorted(p for pair in pairs for p in pair) == list(range(2 * count))
    assert pairing(seed, count) == pairs


def test_pairing_depends_on_the_seed() -> None:
    assert pairing(b"a" * 32, 16) != pairing(b"b" * 32, 16)


@settings(max_examples=60)
@given(st.binary(min_size=32, max_size=32), SOURCE, st.data())
def test_halves_split_each_picked_text_without_overlap(
    seed: bytes, source: list[str], data: st.DataObject
) -> None:
    count = data.draw(st.integers(1, len(source)))
    halves = build_probe(seed, source, count, 0.5)
    texts = [split_units(t) for t in source]
    used: Counter[tuple[str, ...]] = Counter()
    for kept, hidden in pairing(seed, count):
        k, h = split_units(halves[kept]), split_units(halves[hidden])
        assert k and h
        whole = next(t for t in texts if Counter(t) == Counter(k) + Counter(h))
        assert len(h) == hidden_count(len(whole), 0.5)
        used[tuple(sorted(whole))] += 1
    # distinct source positions: never more uses of a text (as its words: two texts may hold
    # the same words in another order) than the source has such texts
    words = Counter(tuple(sorted(t)) for t in texts)
    assert all(n <= words[t] for t, n in used.items())
    assert build_probe(seed, source, count, 0.5) == halves


def test_a_probe_needs_enough_short_texts() -> None:
    long = " ".join(["word"] * (TEXT_BYTES // 4))  # over TEXT_BYTES joined
    assert len(long.encode()) > TEXT_BYTES
    with pytest.raises(ValueError, match="needs 3"):
        build_probe(b"s" * 32, ["a b", "c d", long, "single"], 3, 0.5)
    assert len(build_probe(b"s" * 32, ["a b", "c d", long, "single"], 2, 0.5)) == 4


def paired_vectors(pairs: tuple[tuple[int, int], ...], dim: int, noise: float) -> list[Any]:
    """Vectors whose halves of one text share a direction, plus noise of this size."""
    rng = np.random.default_rng(7)
    out: list[Any] = [None] * (2 * len(pairs))
    for kept, hidden in pairs:
        base = rng.standard_normal(dim)
        out[kept] = (base + noise * rng.standard_normal(dim)).astype(np.float32)
        out[hidden] = (base + noise * rng.standard_normal(dim)).astype(np.float32)
    return out


def test_grade_is_full_when_every_half_finds_its_partner() -> None:
    pairs = pairing(b"k" * 32, 8)
    assert probe_grade(pairs, paired_vectors(pairs, 32, 0.1)) == GRADE_SCALE


def test_a_constant_output_ranks_last() -> None:
    pairs = pairing(b"k" * 32, 8)
    same = [np.ones(16, dtype=np.float32)] * 16
    # every candidate ties with the partner: rank 8, ties count against the encoder
    assert probe_grade(pairs, same) == round(GRADE_SCALE / 8)


def test_missing_halves_grade_zero_and_never_rank_ahead() -> None:
    pairs = pairing(b"k" * 32, 4)
    vecs = paired_vectors(pairs, 16, 0.1)
    assert probe_grade(pairs, [None] * 8) == 0
    hidden = pairs[0][1]
    vecs[hidden] = np.zeros(16, dtype=np.float32)  # zero norm: missing
    # text 0 scores 0 both ways; the others still find their partners first
    assert probe_grade(pairs, vecs) == round(GRADE_SCALE * Fraction(3, 4))
    with pytest.raises(ValueError):
        probe_grade(pairs, vecs[:-1])


@settings(max_examples=40)
@given(st.integers(2, 10), st.floats(0.0, 3.0), st.data())
def test_grade_depends_on_the_texts_not_on_their_positions(
    count: int, noise: float, data: st.DataObject
) -> None:
    pairs = pairing(b"p" * 32, count)
    vecs = paired_vectors(pairs, 24, noise)
    q = probe_grade(pairs, vecs)
    assert 0 <= q <= GRADE_SCALE
    # the same texts in another published order grade the same
    order = data.draw(st.permutations(range(2 * count)))
    where = {old: new for new, old in enumerate(order)}
    moved = [vecs[old] for old in order]
    assert probe_grade([(where[k], where[h]) for k, h in pairs], moved) == q


def test_better_linking_grades_higher() -> None:
    pairs = pairing(b"q" * 32, 16)
    grades = [probe_grade(pairs, paired_vectors(pairs, 48, n)) for n in (0.5, 1.5, 4.0)]
    assert grades[0] > grades[1] > grades[2]


def test_factor_is_the_median_of_each_probers_mean() -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    assert probe_factor([], 8) == 0.0
    history = [(a, 100), (b, 200), (a, 300), (c, 900)]
    # means: a 200, b 200, c 900 -> median 200
    assert probe_factor(history, 8) == 200 / GRADE_SCALE
    # a window of 2 keeps (a, 300), (c, 900): the mean of two middles
    assert probe_factor(history, 2) == 600 / GRADE_SCALE
    assert probe_factor([(a, GRADE_SCALE)], 8) == 1.0


@given(st.lists(st.integers(0, GRADE_SCALE), min_size=2, max_size=6))
def test_one_prober_of_three_cannot_move_the_factor_out_of_the_others_range(
    honest: list[int],
) -> None:
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    half = len(honest) // 2
    history = [(a, q) for q in honest[:half]] + [(b, q) for q in honest[half:]]
    means = [
        Fraction(sum(honest[:half]), max(half, 1)),
        Fraction(sum(honest[half:]), len(honest) - half),
    ]
    for leaked in (0, GRADE_SCALE):
        factor = probe_factor([*history, (c, leaked)], 64)
        if half:
            assert float(min(means) / GRADE_SCALE) <= factor <= float(max(means) / GRADE_SCALE)


def test_probers_take_turns_and_probes_can_be_off() -> None:
    cfg = make_cfg()
    assert [prober(cfg, r) for r in range(6)] == [v.pubkey for v in cfg.validators] * 2
    assert prober(make_cfg(probe_texts=0), 5) is None
    assert probe_shard(cfg) == cfg.shards_per_round


def test_probe_messages_round_trip_and_seed_the_pairing() -> None:
    cfg = make_cfg(probe_texts=4)
    key = key_of(cfg, 7)
    probe_key = sign_probe_key(key, cfg.network_id, 7)
    assert sign_probe_key(key, cfg.network_id, 7) == probe_key  # deterministic
    halves = build_probe(
        probe_seed(probe_key.signature), ["a b c", "d e", "f g h i", "j k"], 4, 0.5
    )
    probe = sign_probe(key, cfg.network_id, 7, halves, key_hash(probe_key.signature))
    for msg in (probe, probe_key):
        assert decode(encode(msg), cfg) == msg
    assert key_hash(probe_key.signature) != probe_seed(probe_key.signature)
    assert isinstance(decode(encode(probe), cfg, Kind.PROBE), Probe)
    assert isinstance(decode(encode(probe_key), cfg, Kind.PROBE_KEY), ProbeKey)


KH = sha256(b"some probe key")


def probe_msg(key: SigningKey, network_id: bytes, rnd: int, halves: tuple[str, ...]) -> Probe:
    """A Probe committed to some key (decoding does not look at which)."""
    return sign_probe(key, network_id, rnd, halves, KH)


def reason(data: bytes, cfg: NetworkConfig) -> RejectReason:
    with pytest.raises(Reject) as err:
        decode(data, cfg)
    return err.value.reason


def test_probe_messages_are_rejected_with_their_reason() -> None:
    cfg = make_cfg(probe_texts=2)
    key = key_of(cfg, 3)
    other = next(k for k in VALIDATORS if k is not key)
    good = ("a b", "c", "d e", "f")
    assert reason(encode(probe_msg(other, cfg.network_id, 3, good)), cfg) is RejectReason.BAD_FIELD
    assert reason(encode(sign_probe_key(other, cfg.network_id, 3)), cfg) is RejectReason.BAD_FIELD
    assert reason(encode(probe_msg(ENCODER, cfg.network_id, 3, good)), cfg) is (
        RejectReason.NOT_VALIDATOR
    )
    assert reason(encode(probe_msg(key, cfg.network_id, 3, good[:3])), cfg) is (
        RejectReason.WRONG_LENGTH
    )
    assert reason(encode(probe_msg(key, cfg.network_id, 3, ("a", " ", "b", "c"))), cfg) is (
        RejectReason.BAD_FIELD
    )
    big = ("x" * TEXT_BYTES, "y" * TEXT_BYTES, "z", "w")  # over 2 x TEXT_BYTES in all
    assert reason(encode(probe_msg(key, cfg.network_id, 3, big)), cfg) is RejectReason.OVERSIZE
    off = make_cfg(probe_texts=0)
    assert reason(encode(sign_probe_key(key_of(cfg, 3), off.network_id, 3)), off) is (
        RejectReason.BAD_FIELD
    )


def test_the_largest_valid_probe_fits_its_bound() -> None:
    cfg = make_cfg(probe_texts=32)
    key = key_of(cfg, 0)
    halves = tuple(("x" * (TEXT_BYTES // 2 - 2) + " y") for _ in range(64))
    data = encode(probe_msg(key, cfg.network_id, 0, halves))
    assert len(data) <= max_message_bytes(cfg, Kind.PROBE) < 64 * 1024
    assert decode(data, cfg) is not None
    over = encode(probe_msg(key, cfg.network_id, 0, (halves[0] + "z", *halves[1:])))
    assert reason(over, cfg) is RejectReason.OVERSIZE


def test_commits_may_list_the_probe_halves_and_reveals_sit_on_the_probe_shard() -> None:
    cfg = make_cfg(probe_texts=3)
    listed = cfg.shards_per_round * cfg.slots_per_shard
    for n in (listed, listed + 6):
        commit = sign_commit(ENCODER, cfg.network_id, 1, (b"h" * 32,) * n)
        assert decode(encode(commit), cfg) == commit
    bad = sign_commit(ENCODER, cfg.network_id, 1, (b"h" * 32,) * (listed + 2))
    assert reason(encode(bad), cfg) is RejectReason.WRONG_LENGTH
    vec = np.ones(cfg.dim, dtype=np.float32)
    ok = make_embedding(ENCODER, cfg.network_id, 1, probe_shard(cfg), 5, b"s" * 16, vec)
    assert decode(encode(ok), cfg) == ok
    for shard, slot in ((probe_shard(cfg), 6), (probe_shard(cfg) + 1, 0), (0, cfg.slots_per_shard)):
        emb = make_embedding(ENCODER, cfg.network_id, 1, shard, slot, b"s" * 16, vec)
        assert reason(encode(emb), cfg) is RejectReason.BAD_FIELD
    off = make_cfg(probe_texts=0)
    emb = make_embedding(ENCODER, off.network_id, 1, probe_shard(off), 0, b"s" * 16, vec)
    assert reason(encode(emb), off) is RejectReason.BAD_FIELD


def reference_grade(pairs: tuple[tuple[int, int], ...], vectors: list[Any]) -> int:
    """The grade's definition with plain float64 cosines (no ties, nothing missing)."""
    unit = [np.asarray(v, np.float64) / np.linalg.norm(v) for v in vectors]
    kept, hidden = [unit[k] for k, _ in pairs], [unit[h] for _, h in pairs]
    total = Fraction(0)
    for queries, keys in ((kept, hidden), (hidden, kept)):
        for i, q in enumerate(queries):
            sims = [float(q @ k) for k in keys]
            total += Fraction(1, 1 + sum(1 for j, s in enumerate(sims) if j != i and s >= sims[i]))
    mean = total / (2 * len(pairs))
    return int(mean * GRADE_SCALE + Fraction(1, 2))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.floats(0.2, 4.0), st.integers(0, 2**32 - 1))
def test_grade_is_the_plain_float_definition_in_exact_fixed_point(
    count: int, noise: float, seed: int
) -> None:
    pairs = pairing(seed.to_bytes(32, "big"), count)
    rng = np.random.default_rng(seed)
    vecs = [rng.standard_normal(64).astype(np.float32) for _ in range(2 * count)]
    for k, h in pairs:  # halves of one text share some of a direction
        vecs[h] = (vecs[k] + noise * rng.standard_normal(64)).astype(np.float32)
    assert probe_grade(pairs, vecs) == reference_grade(pairs, vecs)
