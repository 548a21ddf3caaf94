"""The message kinds, their one canonical msgpack layout each, signing and strict decoding.

Every message encodes as one msgpack array ``[kind, version, field..., signature]`` (the
certificate has no signature of its own: ``[kind, version, network_id, round, result, votes]``).
A signed message's signature is over its kind's domain tag and the canonical encoding of the
same array without the signature. `decode` accepts only the canonical encoding (re-encoding
must give the input back), so two different byte strings never decode to the same message, and
it runs the cheap checks (size, structure, network, dimension, finiteness, validator
membership) before the signature check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import lru_cache
from itertools import pairwise
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.canonical import (
    HASH_BYTES,
    KEY_BYTES,
    MAX_ROUND,
    pack,
    sha256,
    u16be,
    u64be,
    unpack_strict,
)
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.errors import Reject, RejectReason
from dlnet.protocol.identity import SIGNATURE_BYTES, SigningKey, verify
from dlnet.protocol.probes import TEXT_BYTES as PROBE_TEXT_BYTES
from dlnet.protocol.probes import probe_shard, prober
from dlnet.protocol.result import BadResult, RoundResult, decode_result, encode_result

__all__ = [
    "DOMAINS",
    "MAX_ENCODERS",
    "MAX_ROUND",
    "PRECOMMIT",
    "PREVOTE",
    "REVEAL_TAG",
    "SALT_BYTES",
    "WIRE_VERSION",
    "Attestation",
    "Certificate",
    "Commit",
    "Embedding",
    "FinalityVote",
    "Kind",
    "Message",
    "Reject",
    "RejectReason",
    "Schedule",
    "Signed",
    "Submission",
    "decode",
    "encode",
    "listed_limit",
    "make_embedding",
    "max_message_bytes",
    "message_id",
    "sign_attestation",
    "sign_commit",
    "sign_schedule",
    "sign_submission",
    "sign_vote",
    "signature_valid",
    "signed_payload",
    "topic",
]

WIRE_VERSION = 1
SALT_BYTES = 16
MAX_ENCODERS = 1024
"""Most encoders one attestation (and so one round result) may list."""
REVEAL_TAG = b"dlnet/v1/reveal"


class Kind(IntEnum):
    COMMIT = 1
    EMBEDDING = 2
    ATTESTATION = 3
    VOTE = 4
    CERTIFICATE = 5
    SUBMISSION = 6
    SCHEDULE = 7
    PROBE = 8
    PROBE_KEY = 9


DOMAINS: dict[Kind, bytes] = {
    Kind.COMMIT: b"dlnet/v1/commit",
    Kind.EMBEDDING: b"dlnet/v1/embedding",
    Kind.ATTESTATION: b"dlnet/v1/attestation",
    Kind.VOTE: b"dlnet/v1/vote",
    Kind.SUBMISSION: b"dlnet/v1/submission",
    Kind.SCHEDULE: b"dlnet/v1/schedule",
    Kind.PROBE: b"dlnet/v1/probe",
    Kind.PROBE_KEY: b"dlnet/v1/probe-key",
}
"""Signature domain tag per signed kind (the certificate carries votes, signed as VOTE)."""


@dataclass(frozen=True)
class Commit:
    """An encoder's commitments for a round: one `Embedding.commitment` per reveal it will make,
    at index ``shard * slots_per_shard + slot``; ``registration`` is the nonce of the
    encoder's registration proof of work (protocol/registration.py), carried by every commit."""

    network_id: bytes
    round: int
    encoder: bytes
    hashes: tuple[bytes, ...]
    signature: bytes
    registration: int = 0


@dataclass(frozen=True)
class Embedding:
    """One revealed embedding: slot ``slot`` of shard ``shard``, ``dim`` little-endian float32."""

    network_id: bytes
    round: int
    encoder: bytes
    shard: int
    slot: int
    salt: bytes
    vector: bytes
    signature: bytes

    def array(self) -> NDArray[np.float32]:
        """The vector as a read-only float32 array (a view of ``vector``, no copy)."""
        return np.frombuffer(self.vector, dtype="<f4")

    def commitment(self) -> bytes:
        """``SHA-256(b"dlnet/v1/reveal" || network_id || u64be(round) || encoder ||
        u16be(shard) || u16be(slot) || salt || vector)``: what the encoder's commit lists."""
        return sha256(
            REVEAL_TAG,
            self.network_id,
            u64be(self.round),
            self.encoder,
            u16be(self.shard),
            u16be(self.slot),
            self.salt,
            self.vector,
        )


@dataclass(frozen=True)
class Attestation:
    """A validator's scores for a round: ``scores`` is u16 little-endian and ``outliers`` one
    byte (0 or 1) per (shard, encoder) cell, both row-major shards x encoders; ``encoders`` is
    strictly ascending; ``messages_digest`` is the digest of the messages the validator used."""

    network_id: bytes
    round: int
    validator: bytes
    encoders: tuple[bytes, ...]
    scores: bytes
    outliers: bytes
    messages_digest: bytes
    signature: bytes

    def score_matrix(self, shards: int) -> NDArray[np.uint16]:
        """``scores`` as a read-only (shards, encoders) array."""
        return np.frombuffer(self.scores, dtype="<u2").reshape(shards, len(self.encoders))

    def outlier_matrix(self, shards: int) -> NDArray[np.bool_]:
        """``outliers`` as a (shards, encoders) boolean array."""
        flags = np.frombuffer(self.outliers, dtype=np.uint8).astype(np.bool_)
        return flags.reshape(shards, len(self.encoders))


@dataclass(frozen=True)
class FinalityVote:
    """A validator's signature on the digest of the round result it computed.

    ``phase`` 0 is the prevote: it names, in ``attestations``, the message ids (ascending) of
    the attestations the result was computed over. ``phase`` 1 is the finality vote a
    certificate carries; its ``attestations`` is empty (the result names its attestation set).
    One vote per (validator, round, phase); see consensus.precommit_set."""

    network_id: bytes
    round: int
    validator: bytes
    phase: int
    attestations: tuple[bytes, ...]
    result_digest: bytes
    signature: bytes


@dataclass(frozen=True)
class Certificate:
    """A round result and the finality-vote signatures on its digest, as ``(validator,
    signature)`` pairs in ascending validator order. Check it with consensus.verify_certificate
    (`decode` checks its form and that every signer is a validator, not the signatures)."""

    network_id: bytes
    round: int
    result: RoundResult
    votes: tuple[tuple[bytes, bytes], ...]


MAX_TEXT_BYTES = 2048
"""Longest submitted text, in UTF-8 bytes."""
MAX_SUBMISSION_TEXTS = 12
"""Bound on a round's submitted texts whatever the config (``submissions.capacity`` is
min(shards_per_round // 2, this)). A Schedule lists up to twice that (its vote budget), and 24
texts of MAX_TEXT_BYTES fit the 64 KiB gossip bound."""


@dataclass(frozen=True)
class Submission:
    """Texts anyone submits for embedding in round ``round`` (the target round), signed by
    ``submitter`` (any Ed25519 key). Each text is at most MAX_TEXT_BYTES of UTF-8 and has at
    least 2 words; see protocol/submissions.py for which round and shards it enters."""

    network_id: bytes
    round: int
    submitter: bytes
    texts: tuple[str, ...]
    signature: bytes


@dataclass(frozen=True)
class Schedule:
    """A validator's vote on the submissions round ``round`` embeds: ``entries`` are
    ``(submission message id, its texts)`` pairs, ids strictly ascending. The texts travel in
    the schedule so that every node holding the schedule holds what the round embeds.
    Validators with more than the finality fraction of the stake signing the same entries fix
    them."""

    network_id: bytes
    round: int
    validator: bytes
    entries: tuple[tuple[bytes, tuple[str, ...]], ...]
    signature: bytes


@dataclass(frozen=True)
class Probe:
    """Round ``round``'s probe (protocol/probes.py): the halves of its prober's texts, shuffled,
    which every encoder embeds under the probe shard (slot = position)."""

    network_id: bytes
    round: int
    validator: bytes
    halves: tuple[str, ...]
    key_hash: bytes
    """``probes.key_hash`` of the one ProbeKey that opens this probe (its prober commits to
    its key before any encoder embeds: no other key of its can grade the round)."""
    signature: bytes


@dataclass(frozen=True)
class ProbeKey:
    """The prober's key to round ``round``'s probe, published once the round's commits are
    final: its signature over its own head is the key (``probes.probe_seed(signature)``)."""

    network_id: bytes
    round: int
    validator: bytes
    signature: bytes


Message = (
    Commit
    | Embedding
    | Attestation
    | FinalityVote
    | Certificate
    | Submission
    | Schedule
    | Probe
    | ProbeKey
)
Signed = Commit | Embedding | Attestation | FinalityVote | Submission | Schedule | Probe | ProbeKey

_KIND_OF: dict[type[Any], Kind] = {
    Commit: Kind.COMMIT,
    Embedding: Kind.EMBEDDING,
    Attestation: Kind.ATTESTATION,
    FinalityVote: Kind.VOTE,
    Certificate: Kind.CERTIFICATE,
    Submission: Kind.SUBMISSION,
    Schedule: Kind.SCHEDULE,
    Probe: Kind.PROBE,
    ProbeKey: Kind.PROBE_KEY,
}


def _body(msg: Message) -> list[Any]:
    """The wire array of ``msg`` without the signature."""
    head: list[Any] = [int(_KIND_OF[type(msg)]), WIRE_VERSION, msg.network_id, msg.round]
    if isinstance(msg, Commit):
        return [*head, msg.encoder, msg.registration, list(msg.hashes)]
    if isinstance(msg, Embedding):
        return [*head, msg.encoder, msg.shard, msg.slot, msg.salt, msg.vector]
    if isinstance(msg, Attestation):
        return [
            *head,
            msg.validator,
            list(msg.encoders),
            msg.scores,
            msg.outliers,
            msg.messages_digest,
        ]
    if isinstance(msg, FinalityVote):
        return [*head, msg.validator, msg.phase, list(msg.attestations), msg.result_digest]
    if isinstance(msg, Submission):
        return [*head, msg.submitter, list(msg.texts)]
    if isinstance(msg, Schedule):
        return [*head, msg.validator, [[i, list(t)] for i, t in msg.entries]]
    if isinstance(msg, Probe):
        return [*head, msg.validator, list(msg.halves), msg.key_hash]
    if isinstance(msg, ProbeKey):
        return [*head, msg.validator]
    return [*head, encode_result(msg.result), [list(v) for v in msg.votes]]


def signed_payload(msg: Signed) -> bytes:
    """The bytes ``msg``'s signature covers (after its kind's domain tag)."""
    return pack(_body(msg))


def _signer(msg: Signed) -> bytes:
    if isinstance(msg, Submission):
        return msg.submitter
    return msg.encoder if isinstance(msg, Commit | Embedding) else msg.validator


def signature_valid(msg: Signed) -> bool:
    """Whether ``msg.signature`` is its signer's signature (e.g. a certificate's vote, rebuilt
    as a `FinalityVote`)."""
    domain = DOMAINS[_KIND_OF[type(msg)]]
    return verify(_signer(msg), domain, signed_payload(msg), msg.signature)


def encode(msg: Message) -> bytes:
    """The canonical bytes of ``msg``."""
    body = _body(msg)
    return pack(body if isinstance(msg, Certificate) else [*body, msg.signature])


def message_id(data: bytes) -> bytes:
    """The gossip message id: SHA-256 of the message bytes."""
    return sha256(data)


def topic(network_id: bytes, kind: Kind) -> str:
    """The gossip topic of ``kind`` on the network ``network_id``."""
    return f"/dlnet/{network_id.hex()[:16]}/{kind.name.lower()}/{WIRE_VERSION}"


# --- constructors that sign -------------------------------------------------------------------


def _signature(key: SigningKey, unsigned: Signed) -> bytes:
    return key.sign(DOMAINS[_KIND_OF[type(unsigned)]], signed_payload(unsigned))


def sign_commit(
    key: SigningKey,
    network_id: bytes,
    round: int,
    hashes: tuple[bytes, ...],
    registration: int = 0,
) -> Commit:
    unsigned = Commit(network_id, round, key.public_key, tuple(hashes), b"", registration)
    return replace(unsigned, signature=_signature(key, unsigned))


def make_embedding(
    key: SigningKey,
    network_id: bytes,
    round: int,
    shard: int,
    slot: int,
    salt: bytes,
    vector: NDArray[Any],
) -> Embedding:
    """A signed reveal of ``vector`` (any 1-D real array; stored as little-endian float32)."""
    flat = np.ascontiguousarray(vector, dtype="<f4")
    if flat.ndim != 1:
        raise ValueError(f"an embedding is a 1-D vector, got shape {flat.shape}")
    unsigned = Embedding(network_id, round, key.public_key, shard, slot, salt, flat.tobytes(), b"")
    return replace(unsigned, signature=_signature(key, unsigned))


def sign_attestation(
    key: SigningKey,
    network_id: bytes,
    round: int,
    encoders: tuple[bytes, ...],
    scores: bytes,
    outliers: bytes,
    messages_digest: bytes,
) -> Attestation:
    unsigned = Attestation(
        network_id, round, key.public_key, tuple(encoders), scores, outliers, messages_digest, b""
    )
    return replace(unsigned, signature=_signature(key, unsigned))


def sign_submission(
    key: SigningKey, network_id: bytes, round: int, texts: tuple[str, ...]
) -> Submission:
    unsigned = Submission(network_id, round, key.public_key, tuple(texts), b"")
    return replace(unsigned, signature=_signature(key, unsigned))


def sign_schedule(
    key: SigningKey,
    network_id: bytes,
    round: int,
    entries: tuple[tuple[bytes, tuple[str, ...]], ...],
) -> Schedule:
    unsigned = Schedule(network_id, round, key.public_key, tuple(entries), b"")
    return replace(unsigned, signature=_signature(key, unsigned))


def sign_probe(
    key: SigningKey, network_id: bytes, round: int, halves: tuple[str, ...], key_hash: bytes
) -> Probe:
    unsigned = Probe(network_id, round, key.public_key, tuple(halves), key_hash, b"")
    return replace(unsigned, signature=_signature(key, unsigned))


def sign_probe_key(key: SigningKey, network_id: bytes, round: int) -> ProbeKey:
    """The prober's key to round ``round``'s probe: the same bytes every time it is made
    (Ed25519 signatures are deterministic), so a restarted prober rebuilds the same probe."""
    unsigned = ProbeKey(network_id, round, key.public_key, b"")
    return replace(unsigned, signature=_signature(key, unsigned))


PREVOTE: Final = 0
PRECOMMIT: Final = 1


def sign_vote(
    key: SigningKey,
    network_id: bytes,
    round: int,
    result_digest: bytes,
    *,
    phase: int = PRECOMMIT,
    attestations: tuple[bytes, ...] = (),
) -> FinalityVote:
    """A signed vote; a prevote (``phase=PREVOTE``) names its attestation ids, ascending."""
    unsigned = FinalityVote(
        network_id, round, key.public_key, phase, tuple(attestations), result_digest, b""
    )
    return replace(unsigned, signature=_signature(key, unsigned))


# --- strict decoding --------------------------------------------------------------------------

_ARITY = {
    Kind.COMMIT: 8,
    Kind.EMBEDDING: 10,
    Kind.ATTESTATION: 10,
    Kind.VOTE: 9,
    Kind.CERTIFICATE: 6,
    Kind.SUBMISSION: 7,
    Kind.SCHEDULE: 7,
    Kind.PROBE: 8,
    Kind.PROBE_KEY: 6,
}


def _bin(value: Any, length: int | None, what: str) -> bytes:
    if type(value) is not bytes:
        raise Reject(RejectReason.MALFORMED, f"{what}: expected bin")
    if length is not None and len(value) != length:
        raise Reject(RejectReason.WRONG_LENGTH, f"{what}: {len(value)} bytes, expected {length}")
    return value


def _uint(value: Any, high: int, what: str) -> int:
    if type(value) is not int:
        raise Reject(RejectReason.MALFORMED, f"{what}: expected an integer")
    if not 0 <= value <= high:
        raise Reject(RejectReason.BAD_FIELD, f"{what}: {value} outside [0, {high}]")
    return value


def _array(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise Reject(RejectReason.MALFORMED, f"{what}: expected an array")
    return value


def _keys(value: Any, what: str, limit: int) -> tuple[bytes, ...]:
    """A strictly ascending array of at most ``limit`` 32-byte keys."""
    items = _array(value, what)
    if len(items) > limit:
        raise Reject(RejectReason.BAD_FIELD, f"{what}: {len(items)} entries > {limit}")
    keys = tuple(_bin(k, KEY_BYTES, what) for k in items)
    if any(a >= b for a, b in pairwise(keys)):
        raise Reject(RejectReason.BAD_FIELD, f"{what}: not strictly ascending")
    return keys


def _validator(cfg: NetworkConfig, key: bytes) -> bytes:
    if not cfg.is_validator(key):
        raise Reject(RejectReason.NOT_VALIDATOR, key.hex()[:16])
    return key


def _commit(f: list[Any], cfg: NetworkConfig) -> Commit:
    encoder = _bin(f[4], KEY_BYTES, "encoder")
    registration = _uint(f[5], 2**64 - 1, "registration")
    hashes = _array(f[6], "hashes")
    # The round's shards, then (probes on) the probe's halves, which an encoder that never
    # got the probe leaves out.
    shards = cfg.shards_per_round * cfg.slots_per_shard
    allowed = {shards, shards + 2 * cfg.scoring.probe_texts}
    if len(hashes) not in allowed:
        expected = " or ".join(str(n) for n in sorted(allowed))
        raise Reject(RejectReason.WRONG_LENGTH, f"hashes: {len(hashes)}, expected {expected}")
    listed = tuple(_bin(h, HASH_BYTES, "hashes") for h in hashes)
    signature = _bin(f[7], SIGNATURE_BYTES, "signature")
    return Commit(f[2], f[3], encoder, listed, signature, registration)


def _embedding(f: list[Any], cfg: NetworkConfig) -> Embedding:
    encoder = _bin(f[4], KEY_BYTES, "encoder")
    probes = cfg.scoring.probe_texts
    shard = _uint(f[5], probe_shard(cfg) if probes else cfg.shards_per_round - 1, "shard")
    slots = 2 * probes if shard == probe_shard(cfg) else cfg.slots_per_shard
    slot = _uint(f[6], slots - 1, "slot")
    salt = _bin(f[7], SALT_BYTES, "salt")
    vector = _bin(f[8], None, "vector")
    if len(vector) != 4 * cfg.dim:
        raise Reject(RejectReason.WRONG_DIMENSION, f"{len(vector)} bytes, expected {4 * cfg.dim}")
    signature = _bin(f[9], SIGNATURE_BYTES, "signature")
    if not np.isfinite(np.frombuffer(vector, dtype="<f4")).all():
        raise Reject(RejectReason.NON_FINITE, "vector has NaN or infinite components")
    return Embedding(f[2], f[3], encoder, shard, slot, salt, vector, signature)


def _attestation(f: list[Any], cfg: NetworkConfig) -> Attestation:
    validator = _bin(f[4], KEY_BYTES, "validator")
    encoders = _keys(f[5], "encoders", listed_limit(cfg))
    cells = cfg.shards_per_round * len(encoders)
    scores = _bin(f[6], 2 * cells, "scores")
    outliers = _bin(f[7], cells, "outliers")
    if outliers.translate(None, b"\x00\x01"):
        raise Reject(RejectReason.BAD_FIELD, "outliers: a flag other than 0 or 1")
    digest = _bin(f[8], HASH_BYTES, "messages_digest")
    signature = _bin(f[9], SIGNATURE_BYTES, "signature")
    _validator(cfg, validator)
    return Attestation(f[2], f[3], validator, encoders, scores, outliers, digest, signature)


def _vote(f: list[Any], cfg: NetworkConfig) -> FinalityVote:
    validator = _bin(f[4], KEY_BYTES, "validator")
    phase = _uint(f[5], PRECOMMIT, "phase")
    attestations = _keys(f[6], "attestations", len(cfg.validators) if phase == PREVOTE else 0)
    digest = _bin(f[7], HASH_BYTES, "result_digest")
    signature = _bin(f[8], SIGNATURE_BYTES, "signature")
    _validator(cfg, validator)
    return FinalityVote(f[2], f[3], validator, phase, attestations, digest, signature)


def _text_capacity(cfg: NetworkConfig) -> int:
    """Texts one round takes from submissions: half its shards, rounded down (the other half
    stays on the genesis corpus). Mirrored as submissions.capacity."""
    return min(cfg.shards_per_round // 2, MAX_SUBMISSION_TEXTS)


def _vote_budget(cfg: NetworkConfig) -> int:
    """Texts one Schedule may list: twice the round's capacity (submissions.vote_budget)."""
    return 2 * _text_capacity(cfg)


def _texts(value: Any, cfg: NetworkConfig) -> tuple[str, ...]:
    texts = _array(value, "texts")
    if not texts:
        raise Reject(RejectReason.BAD_FIELD, "texts: none")
    if len(texts) > _text_capacity(cfg):
        raise Reject(
            RejectReason.TOO_MANY_TEXTS,
            f"{len(texts)} texts, a round takes at most {_text_capacity(cfg)}",
        )
    for text in texts:
        if type(text) is not str:
            raise Reject(RejectReason.MALFORMED, "texts: expected str")
        if len(text.encode()) > MAX_TEXT_BYTES:
            raise Reject(RejectReason.OVERSIZE, f"a text over {MAX_TEXT_BYTES} bytes")
        if len(text.split()) < 2:
            raise Reject(RejectReason.BAD_FIELD, "a text with fewer than 2 words")
    return tuple(texts)


def _submission(f: list[Any], cfg: NetworkConfig) -> Submission:
    submitter = _bin(f[4], KEY_BYTES, "submitter")
    texts = _texts(f[5], cfg)
    signature = _bin(f[6], SIGNATURE_BYTES, "signature")
    return Submission(f[2], f[3], submitter, texts, signature)


def _schedule(f: list[Any], cfg: NetworkConfig) -> Schedule:
    validator = _bin(f[4], KEY_BYTES, "validator")
    cap = _vote_budget(cfg)
    raw = _array(f[5], "entries")
    if len(raw) > cap:
        raise Reject(RejectReason.BAD_FIELD, f"entries: {len(raw)} > {cap}")
    entries: list[tuple[bytes, tuple[str, ...]]] = []
    for item in raw:
        pair = _array(item, "entries[i]")
        if len(pair) != 2:
            raise Reject(RejectReason.MALFORMED, "entries[i]: expected [id, texts]")
        entries.append((_bin(pair[0], HASH_BYTES, "entry id"), _texts(pair[1], cfg)))
    if any(a[0] >= b[0] for a, b in pairwise(entries)):
        raise Reject(RejectReason.BAD_FIELD, "entries: ids not strictly ascending")
    if sum(len(t) for _, t in entries) > cap:
        raise Reject(RejectReason.BAD_FIELD, f"entries: more than {cap} texts in all")
    signature = _bin(f[6], SIGNATURE_BYTES, "signature")
    _validator(cfg, validator)
    return Schedule(f[2], f[3], validator, tuple(entries), signature)


def _certificate(f: list[Any], cfg: NetworkConfig) -> Certificate:
    result_bytes = _bin(f[4], None, "result")
    votes: list[tuple[bytes, bytes]] = []
    for vote in _array(f[5], "votes"):
        pair = _array(vote, "votes[i]")
        if len(pair) != 2:
            raise Reject(RejectReason.MALFORMED, "votes[i]: expected [validator, signature]")
        votes.append(
            (_bin(pair[0], KEY_BYTES, "vote signer"), _bin(pair[1], SIGNATURE_BYTES, "vote"))
        )
    if any(a[0] >= b[0] for a, b in pairwise(votes)):
        raise Reject(RejectReason.BAD_FIELD, "votes: signers not strictly ascending")
    for signer, _ in votes:
        _validator(cfg, signer)
    try:
        result = decode_result(result_bytes)
    except BadResult as exc:
        raise Reject(exc.reason, f"result: {exc.detail}") from None
    if encode_result(result) != result_bytes:
        raise Reject(RejectReason.NON_CANONICAL, "result: re-encoding gives other bytes")
    if result.network_id != f[2] or result.round != f[3]:
        raise Reject(
            RejectReason.BAD_FIELD, "result: network id or round differs from the certificate's"
        )
    if len(result.encoders) > listed_limit(cfg) or len(result.weighted) != cfg.shards_per_round:
        raise Reject(RejectReason.BAD_FIELD, "result: encoder or shard count out of range")
    if any(len(w) != 4 * cfg.dim for w in result.weighted):
        raise Reject(RejectReason.WRONG_DIMENSION, "result: a weighted embedding of another dim")
    return Certificate(f[2], f[3], result, tuple(votes))


def _prober(cfg: NetworkConfig, key: bytes, r: int) -> bytes:
    _validator(cfg, key)
    if cfg.scoring.probe_texts == 0:
        raise Reject(RejectReason.BAD_FIELD, "probes are off on this network")
    if prober(cfg, r) != key:
        raise Reject(RejectReason.BAD_FIELD, f"{key.hex()[:16]} is not round {r}'s prober")
    return key


def _probe(f: list[Any], cfg: NetworkConfig) -> Probe:
    validator = _bin(f[4], KEY_BYTES, "validator")
    halves = _array(f[5], "halves")
    count = cfg.scoring.probe_texts
    if len(halves) != 2 * count:
        raise Reject(RejectReason.WRONG_LENGTH, f"halves: {len(halves)}, expected {2 * count}")
    if any(type(h) is not str for h in halves):
        raise Reject(RejectReason.MALFORMED, "halves: expected str")
    if any(not h.split() for h in halves):
        raise Reject(RejectReason.BAD_FIELD, "an empty half")
    if sum(len(h.encode()) for h in halves) > count * PROBE_TEXT_BYTES:
        raise Reject(RejectReason.OVERSIZE, f"halves over {count} x {PROBE_TEXT_BYTES} bytes")
    key_hash = _bin(f[6], HASH_BYTES, "key_hash")
    signature = _bin(f[7], SIGNATURE_BYTES, "signature")
    return Probe(f[2], f[3], _prober(cfg, validator, f[3]), tuple(halves), key_hash, signature)


def _probe_key(f: list[Any], cfg: NetworkConfig) -> ProbeKey:
    validator = _bin(f[4], KEY_BYTES, "validator")
    signature = _bin(f[5], SIGNATURE_BYTES, "signature")
    return ProbeKey(f[2], f[3], _prober(cfg, validator, f[3]), signature)


_PARSERS: dict[Kind, Callable[[list[Any], NetworkConfig], Message]] = {
    Kind.COMMIT: _commit,
    Kind.EMBEDDING: _embedding,
    Kind.ATTESTATION: _attestation,
    Kind.VOTE: _vote,
    Kind.CERTIFICATE: _certificate,
    Kind.SUBMISSION: _submission,
    Kind.SCHEDULE: _schedule,
    Kind.PROBE: _probe,
    Kind.PROBE_KEY: _probe_key,
}


def listed_limit(cfg: NetworkConfig) -> int:
    """Most encoders an attestation or a round result may name under ``cfg``: the registered
    set's bound plus as many newcomers (``2 * registration.max_encoders``, at most
    MAX_ENCODERS)."""
    return min(MAX_ENCODERS, cfg.registration.listed_limit)


def _max_result_bytes(dim: int, shards: int, validators: int, encoders: int) -> int:
    """An upper bound on an encoded `RoundResult`: per shard its weighted embedding, per
    encoder its key, score, rank and per-shard cells, per validator its agreement; per shard also
    its text digest."""
    return 1024 + shards * (4 * dim + 42) + encoders * (40 + 4 * shards) + 48 * validators


@lru_cache(maxsize=64)
def _max_bytes(
    kind: Kind, dim: int, shards: int, slots: int, validators: int, encoders: int, probe: int
) -> int:
    """The encoded size of the largest valid message of ``kind`` (every field at its maximum)."""
    h, sig = bytes(HASH_BYTES), bytes(SIGNATURE_BYTES)
    head = [int(kind), WIRE_VERSION, h, 2**64 - 1]  # any 9-byte integer slot, as in v1
    bodies: dict[Kind, list[Any]] = {
        Kind.COMMIT: [h, 2**64 - 1, [h] * (shards * slots + 2 * probe), sig],
        Kind.EMBEDDING: [
            h,
            shards if probe else shards - 1,
            max(slots, 2 * probe) - 1,
            bytes(SALT_BYTES),
            bytes(4 * dim),
            sig,
        ],
        Kind.ATTESTATION: [
            h,
            [h] * encoders,
            bytes(2 * shards * encoders),
            bytes(shards * encoders),
            h,
            sig,
        ],
        Kind.VOTE: [h, PRECOMMIT, [h] * validators, h, sig],
        Kind.CERTIFICATE: [
            bytes(_max_result_bytes(dim, shards, validators, encoders)),
            [[h, sig]] * validators,
        ],
        Kind.SUBMISSION: [
            h,
            ["x" * MAX_TEXT_BYTES] * max(1, min(shards // 2, MAX_SUBMISSION_TEXTS)),
            sig,
        ],
        Kind.SCHEDULE: [
            h,
            [[h, ["x" * MAX_TEXT_BYTES]]] * max(1, 2 * min(shards // 2, MAX_SUBMISSION_TEXTS)),
            sig,
        ],
        # Halves of probe texts of PROBE_TEXT_BYTES share that many bytes; two equal halves
        # take the most length headers.
        Kind.PROBE: [h, ["x" * (PROBE_TEXT_BYTES // 2)] * (2 * probe), h, sig],
        Kind.PROBE_KEY: [h, sig],
    }
    return len(pack([*head, *bodies[kind]]))


def max_message_bytes(cfg: NetworkConfig, kind: Kind) -> int:
    """The largest valid encoded message of ``kind`` under ``cfg``; longer input is oversize."""
    return _max_bytes(
        kind,
        cfg.dim,
        cfg.shards_per_round,
        cfg.slots_per_shard,
        len(cfg.validators),
        listed_limit(cfg),
        cfg.scoring.probe_texts,
    )


def decode(data: bytes, cfg: NetworkConfig, kind: Kind | None = None) -> Message:
    """The message encoded by ``data``, checked against ``cfg``; `Reject` if it is not valid.

    Checks, cheapest first: size (oversize), msgpack and canonical form (malformed,
    non_canonical), kind (wrong_kind, also when it is not ``kind``), version (wrong_version),
    field count and types (malformed), network id (wrong_network), fixed lengths (wrong_length),
    ranges and order (bad_field, also a round above MAX_ROUND), the vector (wrong_dimension,
    non_finite), the signer's membership in the validator set (not_validator), and last the
    signature (bad_signature).
    """
    kinds = list(Kind) if kind is None else [kind]
    obj = unpack_strict(data, max(max_message_bytes(cfg, k) for k in kinds))
    if type(obj) is not list or len(obj) < 2:
        raise Reject(RejectReason.MALFORMED, "not an array [kind, version, ...]")
    if type(obj[0]) is not int or obj[0] not in Kind.__members__.values():
        raise Reject(RejectReason.WRONG_KIND, f"unknown kind {obj[0]!r}")
    got = Kind(obj[0])
    if kind is not None and got is not kind:
        raise Reject(RejectReason.WRONG_KIND, f"{got.name} where {kind.name} was expected")
    if type(obj[1]) is not int or obj[1] != WIRE_VERSION:
        raise Reject(
            RejectReason.WRONG_VERSION, f"version {obj[1]!r}, this node speaks {WIRE_VERSION}"
        )
    if len(data) > max_message_bytes(cfg, got):
        raise Reject(RejectReason.OVERSIZE, f"{len(data)} bytes for a {got.name}")
    if len(obj) != _ARITY[got]:
        raise Reject(RejectReason.MALFORMED, f"{len(obj)} fields, a {got.name} has {_ARITY[got]}")
    if _bin(obj[2], HASH_BYTES, "network_id") != cfg.network_id:
        raise Reject(RejectReason.WRONG_NETWORK, obj[2].hex()[:16])
    _uint(obj[3], MAX_ROUND, "round")
    msg = _PARSERS[got](obj, cfg)
    if not isinstance(msg, Certificate) and not signature_valid(msg):
        raise Reject(RejectReason.BAD_SIGNATURE, f"{got.name} round {msg.round}")
    return msg
