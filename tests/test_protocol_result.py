"""protocol/result.py: the round result's canonical encoding, strict decoding and digest."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.canonical import MAX_ROUND, pack, sha256
from dlnet.protocol.result import (
    RESULT_TAG,
    RESULT_VERSION,
    RoundResult,
    decode_result,
    encode_result,
    result_digest,
    text_digest,
)

KEY = st.binary(min_size=32, max_size=32)
U16 = st.integers(0, 65535)


@st.composite
def results(draw: st.DrawFn) -> RoundResult:
    shards = draw(st.integers(1, 3))
    encoders = tuple(sorted(draw(st.sets(KEY, max_size=4))))
    n = len(encoders)
    cells = shards * n
    dim = draw(st.integers(1, 6))
    floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
    weighted = tuple(
        np.array(draw(st.lists(floats, min_size=dim, max_size=dim)), dtype="<f4").tobytes()
        for _ in range(shards)
    )
    validators = sorted(draw(st.sets(KEY, max_size=4)))
    return RoundResult(
        network_id=draw(KEY),
        round=draw(st.integers(0, MAX_ROUND)),
        encoders=encoders,
        consensus=tuple(draw(st.lists(U16, min_size=cells, max_size=cells))),
        outliers=tuple(draw(st.lists(st.booleans(), min_size=cells, max_size=cells))),
        encoder_scores=tuple(draw(st.lists(U16, min_size=n, max_size=n))),
        ranking=tuple(draw(st.permutations(range(n)))),
        weighted=weighted,
        agreement=tuple((v, draw(U16)) for v in validators),
        attestations_digest=draw(st.binary(min_size=32, max_size=32)),
        texts=tuple(draw(st.binary(min_size=32, max_size=32)) for _ in range(shards)),
    )


def example() -> RoundResult:
    encoders = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
    return RoundResult(
        network_id=b"\xaa" * 32,
        round=9,
        encoders=encoders,
        consensus=(1, 2, 3, 40000, 50000, 65535),
        outliers=(False, True, False, False, False, True),
        encoder_scores=(20000, 25001, 32769),
        ranking=(2, 1, 0),
        weighted=(np.arange(4, dtype="<f4").tobytes(), np.ones(4, dtype="<f4").tobytes()),
        agreement=((b"\x10" * 32, 65535), (b"\x11" * 32, 12)),
        attestations_digest=sha256(b"attestations"),
        texts=(text_digest("a b"), text_digest("c d")),
    )


def fields_of(r: RoundResult) -> list[Any]:
    """The wire array of ``r``, as msgpack decodes it."""
    fields = msgpack.unpackb(encode_result(r))
    assert isinstance(fields, list)
    return fields


@settings(max_examples=200, deadline=None)
@given(results())
def test_round_trip(r: RoundResult) -> None:
    data = encode_result(r)
    assert decode_result(data) == r
    assert encode_result(decode_result(data)) == data


def test_layout_follows_the_spec() -> None:
    r = example()
    f = fields_of(r)
    assert len(f) == 12 and f[0] == RESULT_VERSION == 1
    assert f[1] == r.network_id and f[2] == r.round and f[3] == list(r.encoders)
    assert f[4] == struct.pack("<6H", *r.consensus)  # u16 little-endian, row-major
    assert f[5] == bytes([0, 1, 0, 0, 0, 1])
    assert f[6] == struct.pack("<3H", *r.encoder_scores)
    assert f[7] == [2, 1, 0]
    assert f[8] == list(r.weighted)
    assert f[9] == [[k, a] for k, a in r.agreement]
    assert f[10] == r.attestations_digest
    assert f[11] == list(r.texts) == [text_digest("a b"), text_digest("c d")]
    assert pack(f) == encode_result(r)


def test_digest_is_the_tagged_hash_of_the_encoding() -> None:
    r = example()
    assert RESULT_TAG == b"dlnet/v1/result"
    assert result_digest(r) == sha256(b"dlnet/v1/result", encode_result(r))
    assert result_digest(r) == result_digest(decode_result(encode_result(r)))


def _flip_first(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# One change per field: each keeps the result encodable and differs from the original.
CHANGES: dict[str, Callable[[RoundResult], Any]] = {
    "network_id": lambda r: _flip_first(r.network_id),
    "round": lambda r: r.round + 1,
    "encoders": lambda r: (*r.encoders[:-1], b"\x04" * 32),
    "consensus": lambda r: (r.consensus[0] + 1, *r.consensus[1:]),
    "outliers": lambda r: (not r.outliers[0], *r.outliers[1:]),
    "encoder_scores": lambda r: (r.encoder_scores[0] + 1, *r.encoder_scores[1:]),
    "ranking": lambda r: (r.ranking[1], r.ranking[0], *r.ranking[2:]),
    "weighted": lambda r: (_flip_first(r.weighted[0]), *r.weighted[1:]),
    "agreement": lambda r: ((r.agreement[0][0], r.agreement[0][1] - 1), *r.agreement[1:]),
    "attestations_digest": lambda r: _flip_first(r.attestations_digest),
    "texts": lambda r: (r.texts[1], r.texts[0]),
}


def test_digest_changes_when_any_field_changes() -> None:
    assert set(CHANGES) == {f.name for f in dataclasses.fields(RoundResult)}  # none forgotten
    r = example()
    digest = result_digest(r)
    seen = {digest}
    for name, change in CHANGES.items():
        changed = dataclasses.replace(r, **{name: change(r)})
        assert changed != r, name
        assert result_digest(changed) not in seen, name
        seen.add(result_digest(changed))
        assert decode_result(encode_result(changed)) == changed, name


def test_digest_sees_moves_between_fields() -> None:
    """Same multiset of values in another arrangement: another digest (the layout is fixed)."""
    r = example()
    swapped = dataclasses.replace(r, consensus=tuple(reversed(r.consensus)))
    moved = dataclasses.replace(r, weighted=(r.weighted[1], r.weighted[0]))
    assert len({result_digest(x) for x in (r, swapped, moved)}) == 3


def rebuilt(index: int, value: Any) -> bytes:
    """The example's encoding with field ``index`` replaced by ``value``."""
    f = fields_of(example())
    f[index] = value
    return pack(f)


def good() -> list[Any]:
    return fields_of(example())


BAD: dict[str, tuple[bytes, str]] = {
    # name: (encoding, what the error names)
    "empty": (b"", "msgpack"),
    "trailing byte": (encode_result(example()) + b"\x00", "msgpack"),
    "truncated": (encode_result(example())[:-1], "msgpack"),
    "not an array": (pack({"a": 1}), "12-field"),
    "11 fields": (pack(good()[:11]), "12-field"),
    "13 fields": (pack([*good(), 0]), "12-field"),
    "one text digest short": (rebuilt(11, good()[11][:1]), "texts"),
    "text digest of 31 bytes": (rebuilt(11, [good()[11][0], bytes(31)]), "texts"),
    "version 2": (rebuilt(0, 2), "version"),
    "version true": (rebuilt(0, True), "version"),
    "network id of 31 bytes": (rebuilt(1, b"\xaa" * 31), "network_id"),
    "network id as text": (rebuilt(1, "a" * 32), "network_id"),
    "negative round": (rebuilt(2, -1), "round"),
    "round as float": (rebuilt(2, 9.0), "round"),
    "encoders unsorted": (rebuilt(3, [b"\x02" * 32, b"\x01" * 32, b"\x03" * 32]), "encoders"),
    "encoder twice": (rebuilt(3, [b"\x01" * 32, b"\x01" * 32, b"\x03" * 32]), "encoders"),
    "encoder of 33 bytes": (rebuilt(3, [b"\x01" * 32, b"\x02" * 32, b"\x03" * 33]), "encoders"),
    "encoders as bin": (rebuilt(3, b"\x01" * 96), "encoders"),
    "consensus one cell short": (rebuilt(4, good()[4][:-2]), "consensus"),
    "consensus as array": (rebuilt(4, [1, 2, 3, 4, 5, 6]), "consensus"),
    "outlier flag 2": (rebuilt(5, bytes([0, 2, 0, 0, 0, 1])), "outliers"),
    "outliers one cell long": (rebuilt(5, bytes(7)), "outliers"),
    "encoder_scores short": (rebuilt(6, good()[6][:-2]), "encoder_scores"),
    "ranking not a permutation": (rebuilt(7, [2, 2, 0]), "ranking"),
    "ranking out of range": (rebuilt(7, [3, 1, 0]), "ranking"),
    "ranking too short": (rebuilt(7, [1, 0]), "ranking"),
    "ranking with a bool": (rebuilt(7, [2, True, 0]), "ranking"),
    "weighted NaN": (
        rebuilt(8, [np.array([0, np.nan, 0, 0], "<f4").tobytes(), good()[8][1]]),
        "weighted: NaN",
    ),
    "weighted infinite": (
        rebuilt(8, [good()[8][0], np.array([np.inf] * 4, "<f4").tobytes()]),
        "weighted: NaN",
    ),
    "weighted ragged": (rebuilt(8, [good()[8][0], good()[8][1][:-4]]), "weighted: not float32"),
    "weighted not float32": (
        rebuilt(8, [good()[8][0][:-1], good()[8][1][:-1]]),
        "weighted: not float32",
    ),
    "weighted shard count mismatch": (rebuilt(8, good()[8][:1]), "consensus"),
    "agreement unsorted": (rebuilt(9, list(reversed(good()[9]))), "agreement"),
    "agreement signer twice": (rebuilt(9, [good()[9][0], good()[9][0]]), "agreement"),
    "agreement above u16": (rebuilt(9, [[b"\x10" * 32, 65536]]), "agreement"),
    "agreement triple": (rebuilt(9, [[b"\x10" * 32, 1, 2]]), "agreement"),
    "agreement key short": (rebuilt(9, [[b"\x10" * 31, 1]]), "agreement"),
    "attestations digest short": (rebuilt(10, b"\x00" * 31), "attestations_digest"),
    # The round 9 as a uint64 (0xcf) header: valid msgpack, not the canonical encoding.
    "non-canonical integer": (
        encode_result(example()).replace(b"\x09", b"\xcf" + (9).to_bytes(8), 1),
        "re-encoding",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_strict_decode_rejects(name: str) -> None:
    data, what = BAD[name]
    with pytest.raises(ValueError, match=what):
        decode_result(data)


def test_non_canonical_case_only_differs_in_the_header() -> None:
    """The non-canonical case decodes with plain msgpack to the same fields (so it is refused for
    its form, not its content)."""
    assert msgpack.unpackb(BAD["non-canonical integer"][0]) == good()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_byte_flip_is_refused_or_is_canonical(data: st.DataObject) -> None:
    """Decoding never fails with anything but ValueError, and whatever it accepts re-encodes to
    exactly the input: no two byte strings decode to the same result."""
    wire = encode_result(example())
    pos = data.draw(st.integers(0, len(wire) - 1))
    flipped = wire[:pos] + bytes([wire[pos] ^ data.draw(st.integers(1, 255))]) + wire[pos + 1 :]
    try:
        r = decode_result(flipped)
    except ValueError:
        return
    assert encode_result(r) == flipped
    assert result_digest(r) != result_digest(example())
