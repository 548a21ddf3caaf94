"""The round result: what validators sign and a certificate carries.

Canonical encoding (msgpack array, see canonical.py)::

    [version, network_id, round, encoders, consensus, outliers, encoder_scores, ranking,
     weighted, agreement, attestations_digest, texts]

``encoders``: array of 32-byte keys, strictly ascending. ``consensus``: bin, u16
little-endian, row-major shards x encoders. ``outliers``: bin, one byte (0 or 1) per cell, same
order. ``encoder_scores``: bin, u16 little-endian per encoder. ``ranking``: array of encoder
indices, best first (a permutation). ``weighted``: array, one bin per shard (dim little-endian
float32). ``agreement``: array of ``[validator key, u16]``, validators strictly ascending.
``texts``: array, one 32-byte `text_digest` per shard: the shard's full text (slot 0) as the
validators scored it, so a certificate binds each weighted embedding to the text it embeds.
The digest is ``SHA-256(b"dlnet/v1/result" || encoding)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlnet.protocol.canonical import KEY_BYTES, MAX_ROUND, pack, sha256, unpack_strict
from dlnet.protocol.errors import Reject, RejectReason

RESULT_VERSION = 1
RESULT_TAG = b"dlnet/v1/result"
TEXT_TAG = b"dlnet/v1/shard-text"
U16_MAX = 0xFFFF
MAX_RESULT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RoundResult:
    network_id: bytes
    round: int
    encoders: tuple[bytes, ...]
    consensus: tuple[int, ...]
    """u16 per (shard, encoder) cell, row-major shards x encoders."""
    outliers: tuple[bool, ...]
    """Consensus outlier flag per cell, same order."""
    encoder_scores: tuple[int, ...]
    """u16 per encoder: floor of the mean of its consensus scores over the shards."""
    ranking: tuple[int, ...]
    """Encoder indices, best first; ties by ascending key."""
    weighted: tuple[bytes, ...]
    """Per shard, the consensus-weighted embedding (little-endian float32)."""
    agreement: tuple[tuple[bytes, int], ...]
    """(validator, u16) for every validator whose attestation was used, ascending."""
    attestations_digest: bytes
    texts: tuple[bytes, ...]
    """Per shard, `text_digest` of the shard's full text (slot 0) that was embedded."""

    @property
    def shards(self) -> int:
        return len(self.weighted)


def text_digest(text: str) -> bytes:
    """``SHA-256(b"dlnet/v1/shard-text" || UTF-8 of text)``: how a result names a shard's
    text (the whitespace-normalised full text, `masks.ShardTask.texts[0]`)."""
    return sha256(TEXT_TAG, text.encode())


def _u16s(values: tuple[int, ...]) -> bytes:
    return np.array(values, dtype="<u2").tobytes()


def encode_result(r: RoundResult) -> bytes:
    return pack(
        [
            RESULT_VERSION,
            r.network_id,
            r.round,
            list(r.encoders),
            _u16s(r.consensus),
            bytes(int(o) for o in r.outliers),
            _u16s(r.encoder_scores),
            list(r.ranking),
            list(r.weighted),
            [[v, a] for v, a in r.agreement],
            r.attestations_digest,
            list(r.texts),
        ]
    )


def result_digest(r: RoundResult) -> bytes:
    return sha256(RESULT_TAG, encode_result(r))


class BadResult(ValueError):
    """A round result that does not strictly decode: ``reason`` is the reject reason a
    certificate carrying it gets (``non_canonical``, ``oversize``, ``malformed``), ``detail``
    names the bad field."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise BadResult(RejectReason.MALFORMED, what)


def _bin(v: Any, what: str, length: int | None = None) -> bytes:
    _need(type(v) is bytes and (length is None or len(v) == length), f"{what}: wrong type or size")
    assert isinstance(v, bytes)
    return v


def _uint(v: Any, high: int, what: str) -> int:
    _need(type(v) is int and 0 <= v <= high, f"{what}: not an integer in [0, {high}]")
    assert isinstance(v, int)
    return v


def _ascending_keys(v: Any, what: str) -> tuple[bytes, ...]:
    _need(type(v) is list, f"{what}: not an array")
    keys = tuple(_bin(k, what, KEY_BYTES) for k in v)
    _need(all(a < b for a, b in itertools.pairwise(keys)), f"{what}: not ascending")
    return keys


def decode_result(data: bytes) -> RoundResult:
    """Strict decode; raises `BadResult` (a ValueError) naming the bad field, with the reject
    reason the wire gives a certificate carrying these bytes (§4 "Round result")."""
    try:
        f = unpack_strict(data, MAX_RESULT_BYTES)
    except Reject as exc:
        raise BadResult(exc.reason, exc.detail) from None
    _need(type(f) is list and len(f) == 12, "not a 12-field array")
    _need(f[0] == RESULT_VERSION and type(f[0]) is int, "unknown version")
    network_id = _bin(f[1], "network_id", KEY_BYTES)
    rnd = _uint(f[2], MAX_ROUND, "round")
    encoders = _ascending_keys(f[3], "encoders")
    n = len(encoders)
    _need(type(f[8]) is list, "weighted: not an array")
    weighted = tuple(_bin(w, "weighted") for w in f[8])
    shards = len(weighted)
    _need(
        all(len(w) == len(weighted[0]) and len(w) % 4 == 0 for w in weighted),
        "weighted: not float32 vectors of one length",
    )
    _need(
        all(np.isfinite(np.frombuffer(w, dtype="<f4")).all() for w in weighted),
        "weighted: NaN or infinite components",
    )
    consensus = tuple(int(x) for x in np.frombuffer(_bin(f[4], "consensus", 2 * shards * n), "<u2"))
    flags = _bin(f[5], "outliers", shards * n)
    _need(all(b in (0, 1) for b in flags), "outliers: bytes other than 0 and 1")
    scores = tuple(int(x) for x in np.frombuffer(_bin(f[6], "encoder_scores", 2 * n), "<u2"))
    _need(type(f[7]) is list, "ranking: not an array")
    ranking = tuple(_uint(i, max(n - 1, 0), "ranking") for i in f[7])
    _need(sorted(ranking) == list(range(n)), "ranking: not a permutation of the encoders")
    _need(type(f[9]) is list, "agreement: not an array")
    agreement: list[tuple[bytes, int]] = []
    for pair in f[9]:
        _need(type(pair) is list and len(pair) == 2, "agreement: not [key, u16] pairs")
        agreement.append(
            (_bin(pair[0], "agreement", KEY_BYTES), _uint(pair[1], U16_MAX, "agreement"))
        )
    keys = [k for k, _ in agreement]
    _need(all(a < b for a, b in itertools.pairwise(keys)), "agreement: not ascending")
    digest = _bin(f[10], "attestations_digest", 32)
    _need(type(f[11]) is list and len(f[11]) == shards, "texts: not one digest per shard")
    texts = tuple(_bin(t, "texts", 32) for t in f[11])
    return RoundResult(
        network_id,
        rnd,
        encoders,
        consensus,
        tuple(bool(b) for b in flags),
        scores,
        ranking,
        weighted,
        tuple(agreement),
        digest,
        texts,
    )
