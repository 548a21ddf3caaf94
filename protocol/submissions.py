"""Submitted texts: which round and which shards they enter, and the offline proof of their
consensus embeddings. Pure and deterministic (docs/PROTOCOL.md §5, "Submissions").

A Submission names its target round r. Shortly before r starts (``schedule_time``) every
validator signs a Schedule for r: the submissions it holds for r, picked by `select` (a pure
function of the held set). When validators holding more than the finality fraction of the stake
sign the same entries (`fixed_schedule`), those entries are r's schedule: its texts take shards
0, 1, ... of round r in entry order (`placement`), the other shards keep the genesis corpus.
Otherwise round r embeds the corpus only and the submissions of r are not embedded (their
submitters submit again for a later round). At most one schedule can gather that stake unless
more than a third of the stake signs twice.

The round's certificate then proves each submitted text's consensus embedding: it is the
round result's weighted embedding of the text's shard (`verify_answer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlnet.protocol.canonical import sha256
from dlnet.protocol.consensus import CertificateError, finality_reached, verify_certificate
from dlnet.protocol.masks import round_seed, split_units
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import (
    MAX_SUBMISSION_TEXTS,
    Certificate,
    Kind,
    Reject,
    Schedule,
    Submission,
    decode,
    message_id,
)

if TYPE_CHECKING:
    from dlnet.protocol.config import NetworkConfig

ORDER_TAG = b"dlnet/v1/submission-order"
SUBMIT_AHEAD = 16
"""A Submission may target a round at most this many rounds after the current one."""

Entries = tuple[tuple[bytes, tuple[str, ...]], ...]


def capacity(cfg: NetworkConfig) -> int:
    """Texts one round takes from submissions: ``shards_per_round // 2`` (the other half of the
    shards stays on the genesis corpus, data no submitter chose). Also the most texts one
    Submission may carry and, since a key has one Submission per round, one key's quota."""
    return min(cfg.shards_per_round // 2, MAX_SUBMISSION_TEXTS)


def schedule_lead(cfg: NetworkConfig) -> int:
    """Seconds before a round's start at which validators sign its schedule."""
    return max(2, cfg.timing.round_seconds // 4)


def schedule_time(cfg: NetworkConfig, r: int) -> float:
    """When validators sign round ``r``'s schedule: ``start(r) - schedule_lead``."""
    return round_times(cfg, r).start - schedule_lead(cfg)


def target_round(cfg: NetworkConfig, now: float, margin: float) -> int:
    """The first round whose schedule is signed at least ``margin`` seconds after ``now``
    (what a submitter targets: its message has ``margin`` seconds to reach every validator)."""
    r = max(0, int((now - cfg.genesis_time) // cfg.timing.round_seconds))
    while schedule_time(cfg, r) < now + margin:
        r += 1
    return r


def order_key(network_id: bytes, r: int, submission_id: bytes) -> bytes:
    """Priority of a submission in round r when more is submitted than fits (smaller first):
    ``SHA-256(ORDER_TAG || round_seed(network_id, r) || id)``."""
    return sha256(ORDER_TAG, round_seed(network_id, r), submission_id)


def select(cfg: NetworkConfig, r: int, held: Iterable[tuple[bytes, Submission]]) -> Entries:
    """The entries a validator signs for round r from the submissions it holds (``(message
    id, Submission)`` pairs): submissions of this network and round, one per submitter (the
    smallest id if it holds several: an over-quota key), in `order_key` order, each taken
    whole while the texts taken stay within `capacity`; returned as (id, texts) in ascending id
    order."""
    per_key: dict[bytes, tuple[bytes, Submission]] = {}
    for mid, sub in held:
        if sub.round != r or sub.network_id != cfg.network_id:
            continue
        best = per_key.get(sub.submitter)
        if best is None or mid < best[0]:
            per_key[sub.submitter] = (mid, sub)
    room = capacity(cfg)
    taken: list[tuple[bytes, tuple[str, ...]]] = []
    for mid, sub in sorted(per_key.values(), key=lambda p: order_key(cfg.network_id, r, p[0])):
        if len(sub.texts) <= room:
            taken.append((mid, sub.texts))
            room -= len(sub.texts)
    return tuple(sorted(taken))


def placement(entries: Entries) -> dict[bytes, range]:
    """The shards each scheduled submission's texts take, in entry order from shard 0."""
    out: dict[bytes, range] = {}
    at = 0
    for mid, texts in entries:
        out[mid] = range(at, at + len(texts))
        at += len(texts)
    return out


@dataclass(frozen=True)
class FixedSchedule:
    entries: Entries
    signers: tuple[bytes, ...]
    """Validators (ascending) that signed these entries."""


def fixed_schedule(cfg: NetworkConfig, r: int, votes: Iterable[Schedule]) -> FixedSchedule | None:
    """Round r's schedule from Schedule votes: the entries signed by validators holding more
    than the finality fraction of the stake (the first vote per validator counts; votes of other
    rounds or networks and non-validators are ignored), or None."""
    first: dict[bytes, Schedule] = {}
    for vote in votes:
        ours = vote.round == r and vote.network_id == cfg.network_id
        if ours and cfg.is_validator(vote.validator):
            first.setdefault(vote.validator, vote)
    groups: dict[Entries, list[bytes]] = {}
    for vote in first.values():
        groups.setdefault(vote.entries, []).append(vote.validator)
    for entries, signers in sorted(groups.items()):
        if finality_reached(cfg, sum(cfg.stake_of(s) for s in signers)):
            return FixedSchedule(entries, tuple(sorted(signers)))
    return None


def round_texts(cfg: NetworkConfig, entries: Entries) -> list[str]:
    """The submitted texts of a round, one per shard from shard 0, whitespace-normalised as a
    corpus item (the schedule carries them)."""
    return [" ".join(split_units(t)) for _, texts in entries for t in texts][: capacity(cfg)]


class ProofError(Exception):
    """An answer that does not prove a submission's consensus embeddings."""


@dataclass(frozen=True)
class ProvenEmbedding:
    text: str
    """The text as embedded (whitespace-normalised)."""
    shard: int
    vector: bytes
    """dim little-endian float32: the round result's weighted embedding of ``shard``."""


def verify_answer(
    cfg: NetworkConfig,
    submission: bytes,
    schedule: Sequence[bytes],
    certificate: bytes,
    vectors: Sequence[bytes] | None = None,
) -> list[ProvenEmbedding]:
    """Check, from the network config alone, that ``certificate`` proves the consensus
    embeddings of ``submission``'s texts; returns them in text order. Steps: the submission and
    every schedule vote decode and verify (signatures, validator set); the votes fix round r's
    schedule (`fixed_schedule`) and it lists the submission with its text count; the certificate
    decodes and verifies for round r; each text's vector is the result's weighted embedding of
    its shard (`placement`). Given ``vectors`` (an answer's claimed embeddings), each must be
    that embedding byte for byte. Raises ProofError naming the first failed step."""
    try:
        sub = decode(submission, cfg, Kind.SUBMISSION)
        votes = [decode(v, cfg, Kind.SCHEDULE) for v in schedule]
        cert = decode(certificate, cfg, Kind.CERTIFICATE)
    except Reject as exc:
        raise ProofError(f"a message does not decode: {exc}") from None
    assert isinstance(sub, Submission) and isinstance(cert, Certificate)
    fixed = fixed_schedule(cfg, sub.round, [v for v in votes if isinstance(v, Schedule)])
    if fixed is None:
        raise ProofError(f"the schedule votes do not fix round {sub.round}'s schedule")
    mid = message_id(submission)
    where = placement(fixed.entries).get(mid)
    if where is None or dict(fixed.entries)[mid] != sub.texts:
        raise ProofError(f"round {sub.round}'s schedule does not list the submission")
    if cert.round != sub.round:
        raise ProofError(f"certificate of round {cert.round}, the submission is of {sub.round}")
    try:
        verify_certificate(cfg, cert)
    except CertificateError as exc:
        raise ProofError(f"certificate: {exc}") from None
    out = [
        ProvenEmbedding(" ".join(split_units(text)), shard, cert.result.weighted[shard])
        for text, shard in zip(sub.texts, where, strict=True)
    ]
    if vectors is not None and [p.vector for p in out] != list(vectors):
        raise ProofError("an embedding differs from the certified one")
    return out
