"""Messages: canonical layouts, signing, strict decoding with the right reason code."""

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.canonical import MAX_ROUND, pack, sha256, unpack_strict
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import CertificateError, verify_certificate
from dlnet.protocol.identity import SigningKey, verify
from dlnet.protocol.result import RoundResult, encode_result, result_digest
from dlnet.protocol.wire import (
    DOMAINS,
    MAX_ENCODERS,
    PRECOMMIT,
    PREVOTE,
    WIRE_VERSION,
    Attestation,
    Certificate,
    Commit,
    Embedding,
    FinalityVote,
    Kind,
    Message,
    Reject,
    RejectReason,
    Signed,
    decode,
    encode,
    listed_limit,
    make_embedding,
    max_message_bytes,
    message_id,
    sign_attestation,
    sign_commit,
    sign_vote,
    signature_valid,
    signed_payload,
    topic,
)

VALIDATORS = [SigningKey.from_seed(sha256(b"validator%d" % i)) for i in range(3)]
ENCODER = SigningKey.from_seed(sha256(b"encoder"))


def make_cfg(**overrides: Any) -> NetworkConfig:
    return default_config(
        [ValidatorEntry(k.public_key, 10) for k in VALIDATORS],
        1_700_000_000,
        dataset_sha256=sha256(b"data"),
        **overrides,
    )


SMALL = make_cfg(dim=16, shards_per_round=2, masks_per_shard=1)
FULL = make_cfg()
NET = SMALL.network_id

rounds = st.integers(0, MAX_ROUND)
hashes32 = st.binary(min_size=32, max_size=32)


def vec(cfg: NetworkConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(cfg.dim).astype(np.float32)


def commit(cfg: NetworkConfig = SMALL, rnd: int = 7, probe: bool = False) -> Commit:
    """A commit to the round's shards (and with ``probe``, to its probe's halves too)."""
    n = cfg.shards_per_round * cfg.slots_per_shard + (2 * cfg.scoring.probe_texts if probe else 0)
    return sign_commit(ENCODER, cfg.network_id, rnd, tuple(sha256(b"%d" % i) for i in range(n)))


def embedding(cfg: NetworkConfig = SMALL, rnd: int = 7, vector: Any = None) -> Embedding:
    v = vec(cfg) if vector is None else vector
    return make_embedding(ENCODER, cfg.network_id, rnd, 1, 2, b"s" * 16, v)


def attestation(cfg: NetworkConfig = SMALL, n_enc: int = 3) -> Attestation:
    encoders = tuple(sorted(sha256(b"e%d" % i) for i in range(n_enc)))
    cells = cfg.shards_per_round * n_enc
    scores = np.arange(cells, dtype="<u2").tobytes()
    outliers = bytes(i % 2 for i in range(cells))
    return sign_attestation(VALIDATORS[0], cfg.network_id, 7, encoders, scores, outliers, bytes(32))


def vote(cfg: NetworkConfig = SMALL) -> FinalityVote:
    return sign_vote(VALIDATORS[1], cfg.network_id, 7, sha256(b"result"))


def signed_messages(cfg: NetworkConfig = SMALL) -> list[Signed]:
    return [commit(cfg), embedding(cfg), attestation(cfg), vote(cfg)]


def reason(data: bytes, cfg: NetworkConfig = SMALL, kind: Kind | None = None) -> RejectReason:
    with pytest.raises(Reject) as info:
        decode(data, cfg, kind)
    return info.value.reason


def reencoded(msg: Message, index: int, value: Any) -> bytes:
    """``msg``'s wire array with field ``index`` replaced, canonically re-encoded."""
    fields = msgpack.unpackb(encode(msg), raw=False)
    fields[index] = value
    return pack(fields)


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=40)
@given(rounds, st.lists(hashes32, min_size=6, max_size=6))
def test_commit_round_trip(rnd: int, hashes: list[bytes]) -> None:
    assert len(hashes) == SMALL.shards_per_round * SMALL.slots_per_shard
    msg = sign_commit(ENCODER, NET, rnd, tuple(hashes))
    assert decode(encode(msg), SMALL) == msg
    assert decode(encode(msg), SMALL, Kind.COMMIT) == msg


@settings(max_examples=40)
@given(
    rounds,
    st.integers(0, 1),
    st.integers(0, 2),
    st.binary(min_size=16, max_size=16),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=16, max_size=16),
)
def test_embedding_round_trip(
    rnd: int, shard: int, slot: int, salt: bytes, values: list[float]
) -> None:
    v = np.array(values, dtype=np.float32)
    msg = make_embedding(ENCODER, NET, rnd, shard, slot, salt, v)
    again = decode(encode(msg), SMALL, Kind.EMBEDDING)
    assert again == msg
    assert isinstance(again, Embedding)
    assert np.array_equal(again.array(), v)
    assert not again.array().flags.writeable
    assert again.commitment() == msg.commitment()


@settings(max_examples=40)
@given(st.sets(hashes32, max_size=6), st.data())
def test_attestation_round_trip(encoders: set[bytes], data: st.DataObject) -> None:
    enc = tuple(sorted(encoders))
    cells = SMALL.shards_per_round * len(enc)
    scores = data.draw(st.binary(min_size=2 * cells, max_size=2 * cells))
    outliers = bytes(data.draw(st.lists(st.integers(0, 1), min_size=cells, max_size=cells)))
    key = data.draw(st.sampled_from(VALIDATORS))
    msg = sign_attestation(key, NET, 3, enc, scores, outliers, sha256(scores))
    again = decode(encode(msg), SMALL, Kind.ATTESTATION)
    assert again == msg
    assert isinstance(again, Attestation)
    matrix = again.score_matrix(SMALL.shards_per_round)
    assert matrix.shape == (SMALL.shards_per_round, len(enc))
    assert matrix.tobytes() == scores
    flags = again.outlier_matrix(SMALL.shards_per_round)
    assert flags.dtype == np.bool_ and flags.astype(np.uint8).tobytes() == outliers


@settings(max_examples=40)
@given(rounds, hashes32, st.sampled_from(VALIDATORS))
def test_vote_round_trip(rnd: int, digest: bytes, key: SigningKey) -> None:
    msg = sign_vote(key, NET, rnd, digest)
    assert decode(encode(msg), SMALL, Kind.VOTE) == msg
    assert signature_valid(msg)


def test_embedding_size_at_dim_1024() -> None:
    msg = make_embedding(ENCODER, FULL.network_id, MAX_ROUND, 3, 4, bytes(16), vec(FULL))
    data = encode(msg)
    assert len(data) <= 4400
    assert len(data) <= max_message_bytes(FULL, Kind.EMBEDDING)
    assert decode(data, FULL) == msg


def test_max_sizes_admit_largest_valid_messages() -> None:
    limit = listed_limit(SMALL)
    assert limit == min(MAX_ENCODERS, 2 * SMALL.registration.max_encoders)
    enc = tuple(sorted(sha256(b"%d" % i) for i in range(limit)))
    cells = SMALL.shards_per_round * limit
    att = sign_attestation(
        VALIDATORS[0], NET, MAX_ROUND, enc, bytes(2 * cells), bytes(cells), bytes(32)
    )
    # The size bound keeps v1's 9-byte round slot; MAX_ROUND encodes in 5 bytes.
    assert len(encode(att)) + 4 == max_message_bytes(SMALL, Kind.ATTESTATION)
    assert decode(encode(att), SMALL) == att
    big_commit = dataclasses.replace(commit(SMALL, MAX_ROUND, probe=True), registration=2**64 - 1)
    assert len(encode(big_commit)) + 4 == max_message_bytes(SMALL, Kind.COMMIT)
    one_more = sign_attestation(
        VALIDATORS[0],
        NET,
        1,
        tuple(sorted(sha256(b"%d" % i) for i in range(limit + 1))),
        bytes(2 * (cells + SMALL.shards_per_round)),
        bytes(cells + SMALL.shards_per_round),
        bytes(32),
    )
    with pytest.raises(Reject) as err:
        decode(encode(one_more), SMALL)
    assert err.value.reason in (RejectReason.OVERSIZE, RejectReason.BAD_FIELD)


def test_commit_carries_its_registration_nonce_under_the_signature() -> None:
    n = SMALL.shards_per_round * SMALL.slots_per_shard
    hashes = tuple(sha256(b"%d" % i) for i in range(n))
    msg = sign_commit(ENCODER, NET, 7, hashes, registration=12345)
    assert decode(encode(msg), SMALL) == msg and msg.registration == 12345
    forged = dataclasses.replace(msg, registration=12346)  # the same signature over another nonce
    with pytest.raises(Reject) as err:
        decode(encode(forged), SMALL)
    assert err.value.reason is RejectReason.BAD_SIGNATURE
    body = unpack_strict(encode(msg), 10_000)
    assert isinstance(body, list) and body[5] == 12345 and len(body) == 8
    assert len(encode(embedding(SMALL, MAX_ROUND))) <= max_message_bytes(SMALL, Kind.EMBEDDING)


def test_commitment_binds_every_field() -> None:
    base = embedding()
    seen = {base.commitment()}
    changes: list[dict[str, Any]] = [
        {"network_id": bytes(32)},
        {"round": 8},
        {"encoder": bytes(32)},
        {"shard": 0},
        {"slot": 1},
        {"salt": b"t" * 16},
        {"vector": vec(SMALL, 1).tobytes()},
    ]
    for change in changes:
        h = dataclasses.replace(base, **change).commitment()
        assert h not in seen, change
        seen.add(h)
    assert dataclasses.replace(base, signature=bytes(64)).commitment() == base.commitment()


def test_topic_and_message_id() -> None:
    assert topic(NET, Kind.VOTE) == f"/dlnet/{NET.hex()[:16]}/vote/1"
    assert topic(NET, Kind.EMBEDDING).split("/")[3] == "embedding"
    data = encode(vote())
    assert message_id(data) == sha256(data)


# --- tampering --------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(4))
def test_every_single_byte_flip_is_rejected(index: int) -> None:
    """Exhaustively over positions (xor 0x01), for each signed kind."""
    data = encode(signed_messages()[index])
    for pos in range(len(data)):
        flipped = data[:pos] + bytes([data[pos] ^ 1]) + data[pos + 1 :]
        with pytest.raises(Reject):
            decode(flipped, SMALL)


@settings(max_examples=300)
@given(st.integers(0, 3), st.data())
def test_any_byte_flip_is_rejected(index: int, data: st.DataObject) -> None:
    wire = encode(signed_messages()[index])
    pos = data.draw(st.integers(0, len(wire) - 1))
    mask = data.draw(st.integers(1, 255))
    with pytest.raises(Reject):
        decode(wire[:pos] + bytes([wire[pos] ^ mask]) + wire[pos + 1 :], SMALL)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_reject(data: bytes) -> None:
    with pytest.raises(Reject):
        decode(data, SMALL)


@pytest.mark.parametrize("index", range(4))
def test_truncation_is_malformed(index: int) -> None:
    data = encode(signed_messages()[index])
    for end in range(len(data)):
        assert reason(data[:end]) is RejectReason.MALFORMED


def test_signature_domain_separation() -> None:
    """A commit signature does not verify as a vote: same signer, same payload bytes."""
    c = commit()
    payload = signed_payload(c)
    assert verify(ENCODER.public_key, DOMAINS[Kind.COMMIT], payload, c.signature)
    assert not verify(ENCODER.public_key, DOMAINS[Kind.VOTE], payload, c.signature)
    assert len(set(DOMAINS.values())) == len(DOMAINS)
    v = vote()
    forged = dataclasses.replace(
        v, signature=VALIDATORS[1].sign(DOMAINS[Kind.COMMIT], signed_payload(v))
    )
    assert not signature_valid(forged)
    assert reason(encode(forged)) is RejectReason.BAD_SIGNATURE


# --- reason codes -----------------------------------------------------------------------------


def test_oversize() -> None:
    for msg in signed_messages():
        data = encode(msg)
        kind = Kind(msgpack.unpackb(data)[0])
        padded = data + bytes(max_message_bytes(SMALL, kind) + 1 - len(data))
        assert reason(padded, kind=kind) is RejectReason.OVERSIZE
    huge = bytes(max(max_message_bytes(SMALL, k) for k in Kind) + 1)
    assert reason(huge) is RejectReason.OVERSIZE


def test_oversize_for_its_kind_without_expected_kind() -> None:
    """An embedding-sized vote is rejected even when no kind was expected."""
    data = reencoded(vote(), 5, bytes(1000))
    assert reason(data) is RejectReason.OVERSIZE


def test_non_finite_embedding() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        v = vec(SMALL)
        v[5] = bad
        assert reason(encode(embedding(vector=v))) is RejectReason.NON_FINITE


def test_wrong_dimension() -> None:
    for dim in (15, 17, 0):
        msg = make_embedding(ENCODER, NET, 7, 0, 0, bytes(16), np.zeros(dim, np.float32) + 1)
        assert reason(encode(msg)) is RejectReason.WRONG_DIMENSION


def test_wrong_version() -> None:
    for msg in signed_messages():
        for version in (0, 2, 255):
            assert reason(reencoded(msg, 1, version)) is RejectReason.WRONG_VERSION
        assert reason(reencoded(msg, 1, "1")) is RejectReason.WRONG_VERSION


def test_wrong_network() -> None:
    other = make_cfg(name="another")
    assert other.network_id != NET
    for msg in signed_messages():
        assert reason(encode(msg), other) is RejectReason.WRONG_NETWORK
        assert reason(reencoded(msg, 2, bytes(32))) is RejectReason.WRONG_NETWORK


def test_wrong_kind() -> None:
    assert reason(encode(commit(FULL)), FULL, Kind.EMBEDDING) is RejectReason.WRONG_KIND
    assert reason(encode(vote()), kind=Kind.COMMIT) is RejectReason.WRONG_KIND
    # Longer than any message of the expected kind: caught by the size check first.
    assert reason(encode(commit()), kind=Kind.VOTE) is RejectReason.OVERSIZE
    for bad in (0, max(Kind) + 1, 99, -1, "commit", None):
        assert reason(reencoded(commit(), 0, bad)) is RejectReason.WRONG_KIND


def test_non_canonical() -> None:
    data = encode(vote())
    assert data[0] == 0x99 and data[1] == Kind.VOTE
    cases = [
        b"\xdc\x00\x09" + data[1:],  # array16 header for 9 fields
        data[:1] + b"\xcc\x04" + data[2:],  # kind as uint8 instead of fixint
        data[:2] + b"\xd0\x01" + data[3:],  # version as int8
    ]
    for case in cases:
        assert msgpack.unpackb(case, raw=False) == msgpack.unpackb(data, raw=False)
        assert reason(case) is RejectReason.NON_CANONICAL
    as_str = msgpack.packb(msgpack.unpackb(data), use_bin_type=False)  # bin written as str8
    assert reason(as_str) in (RejectReason.NON_CANONICAL, RejectReason.MALFORMED)


def test_round_above_max_round_is_a_bad_field() -> None:
    for rnd in (MAX_ROUND + 1, 2**63, 2**64 - 1):
        msg = sign_vote(VALIDATORS[1], SMALL.network_id, rnd, sha256(b"result"))
        assert reason(encode(msg)) is RejectReason.BAD_FIELD


def test_deep_nesting_is_malformed() -> None:
    for depth in (9, 500, 5000):
        assert reason(b"\x91" * depth + b"\xc0") is RejectReason.MALFORMED


def test_malformed_structure() -> None:
    v = vote()
    fields = msgpack.unpackb(encode(v), raw=False)
    assert reason(pack(fields[:-1])) is RejectReason.MALFORMED  # missing signature
    assert reason(pack([*fields, b""])) is RejectReason.MALFORMED  # extra field
    assert reason(pack({"kind": 4})) is RejectReason.MALFORMED
    assert reason(pack([4])) is RejectReason.MALFORMED
    assert reason(encode(v) + b"\x00") is RejectReason.MALFORMED  # trailing bytes
    assert reason(reencoded(v, 3, True)) is RejectReason.MALFORMED  # bool is no integer
    assert reason(reencoded(v, 3, 1.0)) is RejectReason.MALFORMED
    assert reason(reencoded(v, 4, "k" * 32)) is RejectReason.MALFORMED  # str, not bin
    assert reason(reencoded(commit(), 6, b"".join(commit().hashes))) is RejectReason.MALFORMED
    assert reason(reencoded(commit(), 5, True)) is RejectReason.MALFORMED  # the nonce
    assert reason(reencoded(commit(), 5, b"\x00" * 8)) is RejectReason.MALFORMED


def test_wrong_lengths() -> None:
    c = commit()
    assert reason(reencoded(c, 6, list(c.hashes[:-1]))) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(c, 6, [*c.hashes, c.hashes[0]])) is RejectReason.WRONG_LENGTH
    probe_halves = 2 * SMALL.scoring.probe_texts  # a commit may list the probe's halves too
    over = [*c.hashes, *[c.hashes[0]] * (probe_halves + 1)]
    assert reason(reencoded(c, 6, over)) is RejectReason.OVERSIZE
    assert reason(reencoded(c, 6, [h[:31] for h in c.hashes])) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(c, 4, c.encoder[:31])) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(c, 7, c.signature[:63])) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(c, 2, NET + b"\x00")) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(embedding(), 7, bytes(15))) is RejectReason.WRONG_LENGTH
    a = attestation()
    assert reason(reencoded(a, 6, a.scores[:-2])) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(a, 7, a.outliers + b"\x00")) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(a, 8, bytes(31))) is RejectReason.WRONG_LENGTH


def test_bad_fields() -> None:
    assert reason(reencoded(commit(), 5, -1)) is RejectReason.BAD_FIELD
    e = embedding()
    assert reason(reencoded(e, 5, SMALL.shards_per_round + 1)) is RejectReason.BAD_FIELD
    assert reason(reencoded(e, 6, SMALL.slots_per_shard)) is RejectReason.BAD_FIELD
    assert reason(reencoded(e, 3, -1)) is RejectReason.BAD_FIELD
    a = attestation()
    assert reason(reencoded(a, 5, list(reversed(a.encoders)))) is RejectReason.BAD_FIELD
    twice = [a.encoders[0], *a.encoders[:-1]]
    assert reason(reencoded(a, 5, twice)) is RejectReason.BAD_FIELD
    assert reason(reencoded(a, 7, b"\x02" + a.outliers[1:])) is RejectReason.BAD_FIELD


def test_not_validator_before_signature() -> None:
    outsider = SigningKey.from_seed(sha256(b"outsider"))
    for msg in (
        sign_vote(outsider, NET, 1, bytes(32)),
        sign_attestation(outsider, NET, 1, (), b"", b"", bytes(32)),
    ):
        assert reason(encode(msg)) is RejectReason.NOT_VALIDATOR
        unsigned = dataclasses.replace(msg, signature=bytes(64))
        assert reason(encode(unsigned)) is RejectReason.NOT_VALIDATOR


def test_bad_signature() -> None:
    for msg in signed_messages():
        wrong = dataclasses.replace(msg, signature=bytes(64))
        assert reason(encode(wrong)) is RejectReason.BAD_SIGNATURE
    other = dataclasses.replace(commit(), encoder=VALIDATORS[0].public_key)
    assert reason(encode(other)) is RejectReason.BAD_SIGNATURE


def test_reject_carries_reason_and_detail() -> None:
    with pytest.raises(Reject) as info:
        decode(encode(vote()), make_cfg(name="x"))
    err = info.value
    assert err.reason is RejectReason.WRONG_NETWORK and err.reason.value == "wrong_network"
    assert str(err).startswith("wrong_network")
    assert WIRE_VERSION == 1


# --- certificate ------------------------------------------------------------------------------


def certificate(cfg: NetworkConfig = SMALL, signers: int = 3) -> Certificate:
    encoders = tuple(sorted(sha256(b"e%d" % i) for i in range(2)))
    cells = cfg.shards_per_round * len(encoders)
    result = RoundResult(
        network_id=cfg.network_id,
        round=7,
        encoders=encoders,
        consensus=tuple(range(cells)),
        outliers=tuple(i % 2 == 0 for i in range(cells)),
        encoder_scores=(10, 20),
        ranking=(1, 0),
        weighted=tuple(vec(cfg, s).tobytes() for s in range(cfg.shards_per_round)),
        agreement=tuple(sorted((k.public_key, 65535) for k in VALIDATORS)),
        attestations_digest=sha256(b"attestations"),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, 7, digest).signature)
        for k in VALIDATORS[:signers]
    )
    return Certificate(cfg.network_id, 7, result, tuple(votes))


def test_certificate_round_trip() -> None:
    cert = certificate()
    again = decode(encode(cert), SMALL, Kind.CERTIFICATE)
    assert again == cert
    assert isinstance(again, Certificate)
    verify_certificate(SMALL, again)
    assert len(encode(certificate(FULL))) <= max_message_bytes(FULL, Kind.CERTIFICATE)


@settings(max_examples=300)
@given(st.data())
def test_certificate_byte_flip_never_verifies(data: st.DataObject) -> None:
    """The certificate has no signature of its own: a flip either fails decoding or fails
    verify_certificate (the votes no longer sign the result, or a vote signature breaks)."""
    wire = encode(certificate())
    pos = data.draw(st.integers(0, len(wire) - 1))
    flipped = wire[:pos] + bytes([wire[pos] ^ data.draw(st.integers(1, 255))]) + wire[pos + 1 :]
    try:
        cert = decode(flipped, SMALL, Kind.CERTIFICATE)
    except Reject:
        return
    assert isinstance(cert, Certificate)
    with pytest.raises(CertificateError):
        verify_certificate(SMALL, cert)


def test_certificate_reasons() -> None:
    cert = certificate()
    votes = [list(v) for v in cert.votes]
    assert reason(reencoded(cert, 5, list(reversed(votes)))) is RejectReason.BAD_FIELD
    assert reason(reencoded(cert, 5, [votes[0], votes[0]])) is RejectReason.BAD_FIELD
    outsider = [sha256(b"outsider"), votes[0][1]]
    assert reason(reencoded(cert, 5, sorted([*votes, outsider]))) is RejectReason.NOT_VALIDATOR
    assert reason(reencoded(cert, 5, [[votes[0][0]]])) is RejectReason.MALFORMED
    assert reason(reencoded(cert, 5, [[votes[0][0], bytes(63)]])) is RejectReason.WRONG_LENGTH
    assert reason(reencoded(cert, 4, b"not a result")) is RejectReason.MALFORMED
    other_round = dataclasses.replace(cert.result, round=8)
    assert reason(reencoded(cert, 4, encode_result(other_round))) is RejectReason.BAD_FIELD
    short = dataclasses.replace(cert.result, weighted=tuple(w[:-4] for w in cert.result.weighted))
    assert reason(reencoded(cert, 4, encode_result(short))) is RejectReason.WRONG_DIMENSION
    one_shard = dataclasses.replace(
        cert.result,
        weighted=cert.result.weighted[:1],
        consensus=cert.result.consensus[:2],
        outliers=cert.result.outliers[:2],
        texts=cert.result.texts[:1],
    )
    assert reason(reencoded(cert, 4, encode_result(one_shard))) is RejectReason.BAD_FIELD
    assert reason(encode(cert), make_cfg(name="x")) is RejectReason.WRONG_NETWORK


def test_certificate_with_a_non_canonical_result_is_non_canonical() -> None:
    """PROTOCOL.md §1 decoding step: result bytes that re-encode differently are
    ``non_canonical`` (not ``malformed``), and the detail names the result once."""
    cert = certificate()
    good = encode_result(cert.result)
    # The round 7 (right after the network id) as a uint64 (0xcf) header: valid msgpack, not
    # the canonical encoding.
    at = good.index(cert.result.network_id) + len(cert.result.network_id)
    assert good[at] == 7
    bad = good[:at] + b"\xcf" + (7).to_bytes(8) + good[at + 1 :]
    assert msgpack.unpackb(bad) == msgpack.unpackb(good)
    with pytest.raises(Reject) as info:
        decode(reencoded(cert, 4, bad), SMALL, Kind.CERTIFICATE)
    assert info.value.reason is RejectReason.NON_CANONICAL
    assert info.value.detail.startswith("result: ")
    assert "result: result:" not in str(info.value)
    with pytest.raises(Reject) as info:
        decode(reencoded(cert, 4, good + b"\x00"), SMALL, Kind.CERTIFICATE)
    assert info.value.reason is RejectReason.MALFORMED


def test_certificate_vote_is_a_finality_vote_signature() -> None:
    cert = certificate()
    validator, sig = cert.votes[0]
    vote = FinalityVote(NET, cert.round, validator, PRECOMMIT, (), result_digest(cert.result), sig)
    assert signature_valid(vote)
    assert decode(encode(vote), SMALL) == vote
    # The same signature does not pass as a prevote: the phase is signed.
    assert not signature_valid(dataclasses.replace(vote, phase=PREVOTE))
