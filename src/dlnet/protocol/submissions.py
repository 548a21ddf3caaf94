"""Submitted texts: which round and which shards they enter, and the offline proof of their
consensus embeddings. Pure and deterministic (docs/PROTOCOL.md §5, "Submissions").

A Submission names its target round r. Shortly before r starts (``schedule_time``) every
validator signs a Schedule for r: the submissions it holds for r, picked by `select` (a pure
function of the held set, up to `vote_budget` texts). A submission listed (with the same
texts) by validators holding more than the finality fraction of the stake is supported; the
supported ones, taken in `order_key` order while they fit `capacity`, are r's schedule
(`fixed_schedule`): their texts take shards 0, 1, ... of round r (`placement`), the other shards
keep the genesis corpus. A submission that some validators missed, or a submitter's two
different submissions sent to different validators, lack that support and are left out alone;
they cannot keep the others out. Two nodes holding the same votes compute the same schedule.

The round result names the text of every shard (`result.texts`, `text_digest`), so the round's
certificate alone proves each submitted text's consensus embedding (`verify_answer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.consensus import CertificateError, finality_reached, verify_certificate
from dlnet.protocol.masks import round_seed, split_units
from dlnet.protocol.result import text_digest
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import (
    MAX_SUBMISSION_TEXTS,
    Certificate,
    Kind,
    Reject,
    Schedule,
    Submission,
    decode,
)

ORDER_TAG = b"dlnet/v1/submission-order"
SUBMIT_AHEAD = 16
"""A Submission may target a round at most this many rounds after the current one."""

Entries = tuple[tuple[bytes, tuple[str, ...]], ...]


def capacity(cfg: NetworkConfig) -> int:
    """Texts one round takes from submissions: ``shards_per_round // 2`` (the other half of the
    shards stays on the genesis corpus, data no submitter chose). Also the most texts one
    Submission may carry and, since a key has one Submission per round, one key's quota."""
    return min(cfg.shards_per_round // 2, MAX_SUBMISSION_TEXTS)


def vote_budget(cfg: NetworkConfig) -> int:
    """Texts one validator's Schedule may list: twice `capacity`, so that one submitter's
    conflicting submissions (each at most `capacity` texts) cannot crowd every other submission
    out of a vote."""
    return 2 * capacity(cfg)


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


def select(
    cfg: NetworkConfig,
    r: int,
    held: Iterable[tuple[bytes, Submission]],
    budget: int | None = None,
) -> Entries:
    """The entries a validator signs for round r from the submissions it holds (``(message
    id, Submission)`` pairs): submissions of this network and round, one per submitter (the
    smallest id if it holds several: an over-quota key), in `order_key` order, each taken
    whole while the texts taken stay within ``budget`` (default `vote_budget`); returned as
    (id, texts) in ascending id order."""
    per_key: dict[bytes, tuple[bytes, Submission]] = {}
    for mid, sub in held:
        if sub.round != r or sub.network_id != cfg.network_id:
            continue
        best = per_key.get(sub.submitter)
        if best is None or mid < best[0]:
            per_key[sub.submitter] = (mid, sub)
    return _take(cfg, r, [(mid, sub.texts) for mid, sub in per_key.values()], budget)


def _take(
    cfg: NetworkConfig, r: int, entries: Iterable[tuple[bytes, tuple[str, ...]]], budget: int | None
) -> Entries:
    """Entries in `order_key` order, each whole while the texts stay within ``budget``
    (default `vote_budget`), skipping one that does not fit; ascending id."""
    room = vote_budget(cfg) if budget is None else budget
    taken: list[tuple[bytes, tuple[str, ...]]] = []
    for mid, texts in sorted(entries, key=lambda p: (order_key(cfg.network_id, r, p[0]), p)):
        if len(texts) <= room:
            taken.append((mid, texts))
            room -= len(texts)
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
    """Validators (ascending) whose votes were counted."""


def fixed_schedule(cfg: NetworkConfig, r: int, votes: Iterable[Schedule]) -> FixedSchedule | None:
    """Round r's schedule from Schedule votes (the first vote per validator counts; votes of
    other rounds or networks and non-validators are ignored). None unless the voters hold more
    than the finality fraction of the stake (the node cannot know the schedule yet). Else an
    entry ``(id, texts)`` is supported when the validators listing exactly it hold more than
    that fraction; the supported entries, taken by `_take` within `capacity`, are the schedule
    (possibly empty)."""
    first: dict[bytes, Schedule] = {}
    for vote in votes:
        ours = vote.round == r and vote.network_id == cfg.network_id
        if ours and cfg.is_validator(vote.validator):
            first.setdefault(vote.validator, vote)
    if not finality_reached(cfg, sum(cfg.stake_of(v) for v in first)):
        return None
    support: dict[tuple[bytes, tuple[str, ...]], int] = {}
    for vote in first.values():
        for entry in vote.entries:
            support[entry] = support.get(entry, 0) + cfg.stake_of(vote.validator)
    supported = [entry for entry, stake in support.items() if finality_reached(cfg, stake)]
    return FixedSchedule(_take(cfg, r, supported, capacity(cfg)), tuple(sorted(first)))


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

    @property
    def empty(self) -> bool:
        """The certified vector is all zeros: no encoder's embedding of the shard carried
        weight (e.g. fewer than min_encoders_for_lof checked voices); not an embedding."""
        return not any(self.vector)


def verify_answer(
    cfg: NetworkConfig,
    submission: bytes,
    certificate: bytes,
    shards: Sequence[int],
    vectors: Sequence[bytes] | None = None,
) -> list[ProvenEmbedding]:
    """Check, from the network config alone, that ``certificate`` proves the consensus
    embeddings of ``submission``'s texts, text i in shard ``shards[i]``; returns them in text
    order. Steps: the submission decodes and verifies (signature); the certificate decodes and
    verifies (`verify_certificate`) for the submission's round; for each text, the result's
    ``texts[shard]`` is `text_digest` of the text (whitespace-normalised), and its vector is
    ``weighted[shard]``. Given ``vectors`` (an answer's claimed embeddings), each must be that
    embedding byte for byte. Raises ProofError naming the first failed step."""
    try:
        sub = decode(submission, cfg, Kind.SUBMISSION)
        cert = decode(certificate, cfg, Kind.CERTIFICATE)
    except Reject as exc:
        raise ProofError(f"a message does not decode: {exc}") from None
    assert isinstance(sub, Submission) and isinstance(cert, Certificate)
    if cert.round != sub.round:
        raise ProofError(f"certificate of round {cert.round}, the submission is of {sub.round}")
    try:
        verify_certificate(cfg, cert)
    except CertificateError as exc:
        raise ProofError(f"certificate: {exc}") from None
    if len(shards) != len(sub.texts):
        raise ProofError(f"{len(shards)} shards named for {len(sub.texts)} texts")
    result = cert.result
    out = []
    for i, (text, shard) in enumerate(zip(sub.texts, shards, strict=True)):
        norm = " ".join(split_units(text))
        if not 0 <= shard < result.shards or result.texts[shard] != text_digest(norm):
            raise ProofError(f"the certified result does not name text {i} in shard {shard}")
        out.append(ProvenEmbedding(norm, shard, result.weighted[shard]))
    if vectors is not None and [p.vector for p in out] != list(vectors):
        raise ProofError("an embedding differs from the certified one")
    return out
