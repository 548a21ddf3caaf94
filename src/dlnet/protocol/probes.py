"""Probes: the inverse-cloze grade of an encoder on texts it could not read before the round
(docs/PROTOCOL.md §2.8).

Every other grade of scoring.py is agreement with the pool, so a better model of another
architecture can at best tie the majority. A probe asks for something agreement cannot give:
round r's *prober* (one validator, in turn) splits ``probe_texts`` texts of its own into two
halves each (the kept and the hidden words of a mask, no word in common), shuffles all the
halves together and publishes them at the round's start without their pairing. Every encoder
embeds the halves beside its shards (committed and revealed like any slot). Once the commits
are final the prober publishes its *probe key*, and every validator grades how well each
encoder's kept half picks out its own hidden half among all the hidden halves, by cosine in
the encoder's own space: a label-free measure of understanding (Spearman rho 0.9 with held-out
supervised quality, docs/VALIDITY.md) that no map into the network's space and no copy of the
majority can fake, because nobody but the prober could link the halves before committing.

The pairing is a function of ``probe_seed``: a hash of the prober's Ed25519 signature over the
round (the key: unpredictable without the prober's private key; an honest prober's signing is
deterministic, so a restarted prober derives the same probe). A signer that picks its own nonce
can make many valid signatures of one message, so the Probe carries ``key_hash`` of the key it
will reveal: made before any encoder embeds, it leaves the prober one key that opens its probe,
and nothing to choose once the reveals are public. Everything here is pure: the node signs,
picks the source texts and keeps the grades (node/probing.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.canonical import sha256, u64be
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.masks import Drbg, hidden_count, split_by_mask, split_units

PROBE_TAG = b"dlnet/v1/probe"
KEY_HASH_TAG = b"dlnet/v1/probe/key-hash"
TEXTS_TAG = b"dlnet/v1/probe/texts"
HIDE_TAG = b"dlnet/v1/probe/hide"
ORDER_TAG = b"dlnet/v1/probe/order"
TEXT_BYTES = 1024
"""Longest text a probe takes, in UTF-8 bytes (joined by single spaces): 32 texts fit a
gossip message."""
GRADE_SCALE = 65535
"""Grades travel and are kept as integers q in [0, GRADE_SCALE] (grade = q / GRADE_SCALE)."""


def prober(cfg: NetworkConfig, r: int) -> bytes | None:
    """The validator that probes round ``r``: ``cfg.validators[r mod n]`` (ascending pubkey),
    None when probes are off (``scoring.probe_texts`` = 0)."""
    if cfg.scoring.probe_texts == 0:
        return None
    return cfg.validators[r % len(cfg.validators)].pubkey


def probe_shard(cfg: NetworkConfig) -> int:
    """The shard index a probe's halves are committed and revealed under (slot = half index):
    the one after the round's last shard."""
    return cfg.shards_per_round


def probe_seed(signature: bytes) -> bytes:
    """``SHA-256(PROBE_TAG || signature)``: unpredictable without the prober's key, checkable
    once shown (the signature verifies, and opens the Probe's ``key_hash``)."""
    return sha256(PROBE_TAG, signature)


def key_hash(signature: bytes) -> bytes:
    """``SHA-256(KEY_HASH_TAG || signature)``: what a Probe commits its key to. A ProbeKey
    whose signature does not hash to its Probe's ``key_hash`` opens nothing (no grade)."""
    return sha256(KEY_HASH_TAG, signature)


def pairing(seed: bytes, count: int) -> tuple[tuple[int, int], ...]:
    """Where each text's halves sit in a probe of ``count`` texts: ``pairs[i] = (k, h)``, the
    published positions of text i's kept and hidden half. Half 2i is text i's kept half and
    2i + 1 its hidden half; position p shows half ``Drbg(seed, ORDER_TAG).sample(2 count,
    2 count)[p]``. A function of the seed alone, so that anyone holding the probe key can
    grade."""
    order = Drbg(seed, ORDER_TAG).sample(2 * count, 2 * count)
    position = {half: p for p, half in enumerate(order)}
    return tuple((position[2 * i], position[2 * i + 1]) for i in range(count))


def eligible_texts(texts: Sequence[Sequence[str]]) -> list[int]:
    """Indices of the texts (as words) a probe may take: >= 2 words, <= TEXT_BYTES joined."""
    return [
        i
        for i, words in enumerate(texts)
        if len(words) >= 2 and len(" ".join(words).encode()) <= TEXT_BYTES
    ]


def build_probe(
    seed: bytes, source: Sequence[str], count: int, mask_fraction: float
) -> tuple[str, ...]:
    """The published halves of a probe of ``count`` texts of ``source`` (order: `pairing`).

    Eligible texts have >= 2 words and fit ``TEXT_BYTES`` of UTF-8 (joined by single spaces);
    text i is the i-th of ``Drbg(seed, TEXTS_TAG).sample(eligible, count)``; it hides
    ``hidden_count(n, mask_fraction)`` of its n words drawn by ``Drbg(seed, HIDE_TAG ||
    u64be(i))``: its kept half joins the other words, its hidden half these (both in text
    order). Raises ValueError when fewer than ``count`` texts are eligible.
    """
    texts = [split_units(t) for t in source]
    eligible = eligible_texts(texts)
    if len(eligible) < count:
        raise ValueError(
            f"probe source has {len(eligible)} texts of 2 words or more that fit "
            f"{TEXT_BYTES} bytes, a probe needs {count} — give the prober more texts"
        )
    halves = [""] * (2 * count)
    pairs = pairing(seed, count)
    for i, pick in enumerate(Drbg(seed, TEXTS_TAG).sample(len(eligible), count)):
        words = texts[eligible[pick]]
        n = len(words)
        hide = Drbg(seed, HIDE_TAG + u64be(i)).sample(n, hidden_count(n, mask_fraction))
        kept, hidden = pairs[i]
        halves[kept], halves[hidden] = split_by_mask(words, hide)
    return tuple(halves)


UNIT_BITS = 20
"""Fixed-point scale of a unit vector's coordinates in the grade: 2^-20 resolution, and the dot
product of two stays an exact int64 for any dim <= 2^20 (|sum| <= dim x 2^40)."""


def _unit(row: NDArray[np.float32] | None, eps: float) -> NDArray[np.int64] | None:
    """``row`` divided by its norm and rounded to multiples of 2^-UNIT_BITS (as integers), None
    when it is missing, non-finite or of norm <= eps. The norm is a correctly rounded sum and
    the rest is IEEE-754 division and rounding: the same integers on every platform."""
    if row is None:
        return None
    x = np.asarray(row, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return None
    norm = math.sqrt(math.fsum((x * x).tolist()))
    if norm <= eps:
        return None
    out: NDArray[np.int64] = np.rint(x / norm * (1 << UNIT_BITS)).astype(np.int64)
    return out


def _reciprocal_ranks(
    queries: Sequence[NDArray[np.int64] | None], keys: Sequence[NDArray[np.int64] | None]
) -> Fraction:
    """Sum over i of 1 / (1 + the number of keys j != i with cosine to query i at least that of
    key i); 0 for i when query i or key i is None; a None key is never ahead. Cosines are the
    exact integer dot products of the fixed-point unit vectors (`_unit`)."""
    held = [key for key in keys if key is not None]
    if not held:
        return Fraction(0)
    matrix = np.stack(held)
    total = Fraction(0)
    for query, own in zip(queries, keys, strict=True):
        if query is None or own is None:
            continue
        sims = matrix @ query  # int64: exact
        # every held key at least as close, its own included once
        total += Fraction(1, int(np.count_nonzero(sims >= int(own @ query))))
    return total


def probe_grade(
    pairs: Sequence[tuple[int, int]],
    vectors: Sequence[NDArray[np.float32] | None],
    eps: float = 1e-6,
) -> int:
    """An encoder's grade on a probe (``pairs``: its `pairing`), as q in [0, GRADE_SCALE]: the
    mean reciprocal rank of each half's partner, both ways: of text i's hidden half among all
    hidden halves by cosine to its kept half, and of its kept half among all kept halves by
    cosine to its hidden half, in the encoder's own vectors (``vectors[p]`` for published
    position p; None where it revealed nothing).

    Rank = 1 + the number of OTHER candidates at least as close (ties count against the
    encoder, so a constant output ranks last); a text with a missing half (None, non-finite or
    of norm <= eps) scores 0 both ways, and such a half is never ahead of another. Cosines are
    exact integer dot products of the unit vectors in fixed point (2^-20, `_unit`): the same on
    every platform, with no float summation order to agree on; q = round-half-up of
    GRADE_SCALE x the exact mean.
    """
    if len(vectors) != 2 * len(pairs):
        raise ValueError(f"{len(vectors)} vectors for a probe of {2 * len(pairs)} halves")
    units = [_unit(v, eps) for v in vectors]
    kept = [units[k] for k, _ in pairs]
    hidden = [units[h] for _, h in pairs]
    mean = (_reciprocal_ranks(kept, hidden) + _reciprocal_ranks(hidden, kept)) / (2 * len(pairs))
    return math.floor(mean * GRADE_SCALE + Fraction(1, 2))


def probe_factor(history: Sequence[tuple[bytes, int]], window: int) -> float:
    """An encoder's probe factor from its graded probes, oldest first: ``(prober, q)`` pairs.

    Over the last ``window`` entries, the mean grade of each prober's probes, then the median
    of these means over the probers (the mean of the two middle ones for an even count), as a
    fraction of GRADE_SCALE; 0 with no entry. The median is what a prober that leaks its
    pairing to a favoured encoder before the commit deadline cannot move while the probers
    are mostly honest. Exact rational arithmetic, one rounding at the end.
    """
    by: dict[bytes, list[int]] = {}
    for who, q in history[-window:] if window > 0 else ():
        by.setdefault(who, []).append(q)
    if not by:
        return 0.0
    means = sorted(Fraction(sum(qs), len(qs)) for qs in by.values())
    mid = len(means) // 2
    median = means[mid] if len(means) % 2 else (means[mid - 1] + means[mid]) / 2
    return float(median / GRADE_SCALE)
