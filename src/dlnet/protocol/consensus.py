"""Consensus: quantised scores, the stake-weighted κ-median, the round result, certificates.

All consensus arithmetic is on integers (u16 scores, integer stakes, κ and the finality
threshold as exact fractions), so every validator computes bit-for-bit the same result from the
same attestations and revealed embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Final

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.result import U16_MAX, RoundResult, result_digest
from dlnet.protocol.scoring import round_embeddings
from dlnet.protocol.wire import (
    PRECOMMIT,
    PREVOTE,
    Attestation,
    Certificate,
    FinalityVote,
    Kind,
    Reject,
    decode,
    encode,
    listed_limit,
    message_id,
    signature_valid,
)

ATTESTATIONS_TAG = b"dlnet/v1/attestations"


class MissingEmbeddings(Exception):
    """The result needs full embeddings this validator does not hold: (shard, encoder) pairs."""

    def __init__(self, missing: Sequence[tuple[int, bytes]]) -> None:
        super().__init__(f"{len(missing)} full embeddings missing")
        self.missing = tuple(missing)


class MissingCommits(Exception):
    """The result names encoders whose commit this validator does not hold: it must not sign."""

    def __init__(self, encoders: Sequence[bytes]) -> None:
        super().__init__(f"{len(encoders)} commits missing")
        self.encoders = tuple(encoders)


class CertificateReason(StrEnum):
    """Why `verify_certificate` refused a certificate, in the order it checks."""

    WRONG_NETWORK = "wrong_network"
    """The certificate's or its result's network id is not the config's."""
    WRONG_ROUND = "wrong_round"
    """The result's round is not the certificate's."""
    DUPLICATE_SIGNER = "duplicate_signer"
    """A validator signs twice (its stake would count twice)."""
    UNKNOWN_SIGNER = "unknown_signer"
    """A signer is not in the config's validator set."""
    BAD_SIGNATURE = "bad_signature"
    """A signature is not its signer's finality vote over this round and this result's digest:
    forged, or made over another result (so a result altered after signing lands here)."""
    EMPTY_RESULT = "empty_result"
    """The result names no encoder: a round with no output is never final."""
    INSUFFICIENT_ATTESTATIONS = "insufficient_attestations"
    """The validators whose attestations the result used (its ``agreement``) hold no more than
    finality_num/finality_den of the total stake."""
    INSUFFICIENT_STAKE = "insufficient_stake"
    """The signers hold no more than finality_num/finality_den of the total stake."""


class CertificateError(Exception):
    """A certificate that does not prove its result final; ``reason`` says which check failed."""

    def __init__(self, reason: CertificateReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


def finality_reached(cfg: NetworkConfig, stake: int) -> bool:
    """Whether ``stake`` is MORE than finality_num/finality_den of the total stake: the one
    threshold for signing, assembling and verifying certificates and for attestation sets."""
    c = cfg.consensus
    return stake * c.finality_den > c.finality_num * cfg.total_stake


def blocking(cfg: NetworkConfig, stake: int) -> bool:
    """Whether ``stake`` is MORE than 1 - finality_num/finality_den of the total (1/3 at the
    default): no quorum can form without some of it."""
    c = cfg.consensus
    return stake * c.finality_den > (c.finality_den - c.finality_num) * cfg.total_stake


def quantise(score: float) -> int:
    """A score in [0, 1] as u16: ``floor(clamp(score, 0, 1) * 65535 + 0.5)``; NaN -> 0."""
    if not score > 0.0:
        return 0
    return math.floor(min(score, 1.0) * U16_MAX + 0.5)


def kappa_median(
    values: Sequence[int], stakes: Sequence[int], kappa: Fraction, total_stake: int
) -> int:
    """The largest x such that the validators scoring >= x hold at least κ of the total stake
    (0 if no value has that support).

    ``values[i]`` is validator i's score, ``stakes[i]`` its stake. ``total_stake`` is the whole
    validator set's, so a validator that is absent from ``values`` counts as scoring 0. The
    support of x only changes at the given values, so the largest such x is one of them (or 0).
    """
    if len(values) != len(stakes):
        raise ValueError(f"{len(values)} values for {len(stakes)} stakes")
    ordered = sorted(zip(values, stakes, strict=True), reverse=True)
    support = 0
    for i, (x, stake) in enumerate(ordered):
        support += stake
        last_of_x = i + 1 == len(ordered) or ordered[i + 1][0] != x
        if last_of_x and support * kappa.denominator >= kappa.numerator * total_stake:
            return x
    return 0


@dataclass(frozen=True)
class ConsensusView:
    """The consensus of a set of attestations: per (shard, encoder) cell, over ``encoders``."""

    encoders: tuple[bytes, ...]
    consensus: NDArray[np.int64]  # (S, E)
    outliers: NDArray[np.bool_]  # (S, E)


def usable_attestations(
    cfg: NetworkConfig, rnd: int, attestations: Sequence[Attestation]
) -> list[Attestation]:
    """One attestation per validator (the first given), of this network and round, from the
    validator set, with a score matrix of the right shape; in ascending validator order."""
    seen: dict[bytes, Attestation] = {}
    for a in attestations:
        cells = cfg.shards_per_round * len(a.encoders)
        if (
            a.network_id == cfg.network_id
            and a.round == rnd
            and cfg.is_validator(a.validator)
            and len(a.scores) == 2 * cells
            and len(a.outliers) == cells
        ):
            seen.setdefault(a.validator, a)
    return [seen[v] for v in sorted(seen)]


def supported_encoders(
    cfg: NetworkConfig, attestations: Sequence[Attestation]
) -> tuple[bytes, ...]:
    """The encoders of the result, ascending: those listed by validators holding at least κ of
    the total stake (one validator below κ can neither add nor pad). Should more than
    `listed_limit` qualify, the `listed_limit` with the most listing stake, ties by smaller key.

    ``attestations``: at most one per validator (what `usable_attestations` returns)."""
    kappa = cfg.consensus.kappa_fraction
    support: dict[bytes, int] = {}
    for a in attestations:
        for e in a.encoders:
            support[e] = support.get(e, 0) + cfg.stake_of(a.validator)
    ok = [
        e
        for e, stake in support.items()
        if stake * kappa.denominator >= kappa.numerator * cfg.total_stake
    ]
    ok.sort(key=lambda e: (-support[e], e))
    return tuple(sorted(ok[: listed_limit(cfg)]))


def _columns(a: Attestation, col: Mapping[bytes, int]) -> tuple[list[int], list[int]]:
    """(columns of ``a``'s matrices kept, their columns in the result) for the result's
    encoders ``col``."""
    kept = [i for i, e in enumerate(a.encoders) if e in col]
    return kept, [col[a.encoders[i]] for i in kept]


def consensus_matrix(cfg: NetworkConfig, attestations: Sequence[Attestation]) -> ConsensusView:
    """κ-median of the scores and of the outlier flags for every (shard, encoder) cell over the
    `supported_encoders`; a validator that does not list an encoder scores it 0 and does not
    flag it.

    ``attestations`` must be at most one per validator, all of one round, with matrices of
    ``shards_per_round`` rows: what `usable_attestations` returns.
    """
    encoders = supported_encoders(cfg, attestations)
    shards = cfg.shards_per_round
    kappa = cfg.consensus.kappa_fraction
    total = cfg.total_stake
    stakes = [cfg.stake_of(a.validator) for a in attestations]
    scores = np.zeros((len(attestations), shards, len(encoders)), dtype=np.int64)
    flags = np.zeros((len(attestations), shards, len(encoders)), dtype=np.int64)
    col = {e: i for i, e in enumerate(encoders)}
    for v, a in enumerate(attestations):
        kept, idx = _columns(a, col)
        scores[v][:, idx] = a.score_matrix(shards)[:, kept]
        flags[v][:, idx] = a.outlier_matrix(shards)[:, kept]
    consensus = np.zeros((shards, len(encoders)), dtype=np.int64)
    outliers = np.zeros((shards, len(encoders)), dtype=np.bool_)
    for s in range(shards):
        for e in range(len(encoders)):
            consensus[s, e] = kappa_median([int(x) for x in scores[:, s, e]], stakes, kappa, total)
            outliers[s, e] = (
                kappa_median([int(x) for x in flags[:, s, e]], stakes, kappa, total) == 1
            )
    return ConsensusView(encoders, consensus, outliers)


def attestation_ids(attestations: Sequence[Attestation]) -> tuple[bytes, ...]:
    """The message ids of ``attestations``, ascending: the set a prevote names."""
    return tuple(sorted(message_id(encode(a)) for a in attestations))


def attestations_digest(attestations: Sequence[Attestation]) -> bytes:
    """SHA-256 over the tag and the message ids of the attestations used, ascending."""
    return sha256(ATTESTATIONS_TAG, *attestation_ids(attestations))


def compute_result(
    cfg: NetworkConfig,
    rnd: int,
    attestations: Sequence[Attestation],
    fulls: Mapping[tuple[int, bytes], NDArray[np.float32]],
    committed: Collection[bytes] | None = None,
    *,
    texts: Sequence[bytes],
) -> RoundResult:
    """The round result from the attestations held and the revealed full embeddings.

    ``texts``: per shard, `result.text_digest` of the shard's full text as scored (the
    round's tasks, submitted texts included); the result carries them.

    ``fulls[(shard, encoder)]`` is the encoder's full embedding of that shard. The weighted
    embedding of a shard is `scoring.round_embeddings` of its non-outlier encoders weighted by
    their u16 consensus scores; raises MissingEmbeddings if a positively weighted one is absent.
    ``committed``: the encoders whose commit the caller holds; raises MissingCommits if the
    result names another (None: no check).
    """
    used = usable_attestations(cfg, rnd, attestations)
    view = consensus_matrix(cfg, used)
    if committed is not None:
        absent = [e for e in view.encoders if e not in committed]
        if absent:
            raise MissingCommits(absent)
    shards, n = cfg.shards_per_round, len(view.encoders)
    if len(texts) != shards or any(len(t) != 32 for t in texts):
        raise ValueError(f"texts: expected {shards} digests of 32 bytes")
    weights = np.where(view.outliers, 0, view.consensus)
    missing = [
        (s, view.encoders[e])
        for s in range(shards)
        for e in range(n)
        if weights[s, e] > 0 and (s, view.encoders[e]) not in fulls
    ]
    if missing:
        raise MissingEmbeddings(missing)
    weighted = [
        vec.astype("<f4").tobytes()
        for vec in round_embeddings(
            weights,
            view.encoders,
            fulls,
            dim=cfg.dim,
            duplicate_cos=cfg.scoring.duplicate_cos,
        )
    ]
    encoder_scores = tuple(int(view.consensus[:, e].sum()) // shards for e in range(n))
    ranking = tuple(sorted(range(n), key=lambda e: (-encoder_scores[e], view.encoders[e])))
    cells = shards * n
    col = {e: i for i, e in enumerate(view.encoders)}
    agreement = []
    for a in used:
        own = np.zeros((shards, n), dtype=np.int64)
        kept, idx = _columns(a, col)
        own[:, idx] = a.score_matrix(shards)[:, kept]
        gap = int(np.abs(own - view.consensus).sum())
        agreement.append((a.validator, U16_MAX - (gap // cells if cells else 0)))
    return RoundResult(
        network_id=cfg.network_id,
        round=rnd,
        encoders=view.encoders,
        consensus=tuple(int(x) for x in view.consensus.ravel()),
        outliers=tuple(bool(x) for x in view.outliers.ravel()),
        encoder_scores=encoder_scores,
        ranking=ranking,
        weighted=tuple(weighted),
        agreement=tuple(agreement),
        attestations_digest=attestations_digest(used),
        texts=tuple(texts),
    )


def result_problem(cfg: NetworkConfig, result: RoundResult) -> CertificateError | None:
    """Why ``result`` can never be final, or None: it names no encoder, or the validators
    whose attestations it used hold no more than the finality fraction of the stake."""
    if not result.encoders:
        return CertificateError(CertificateReason.EMPTY_RESULT)
    attested = sum(cfg.stake_of(v) for v, _ in result.agreement if cfg.is_validator(v))
    if not finality_reached(cfg, attested):
        return CertificateError(
            CertificateReason.INSUFFICIENT_ATTESTATIONS,
            f"attestations from {attested} of {cfg.total_stake} stake",
        )
    return None


def round_trips(cfg: NetworkConfig, result: RoundResult) -> bool:
    """Whether ``result`` survives the trip every certificate makes (encode, strict decode
    with this config's limits, equal value): a validator signs nothing that fails it."""
    cert = Certificate(cfg.network_id, result.round, result, ())
    try:
        return decode(encode(cert), cfg, Kind.CERTIFICATE) == cert
    except Reject:
        return False


def precommit_set(
    cfg: NetworkConfig, prevotes: Sequence[FinalityVote], own: tuple[bytes, ...] | None
) -> tuple[bytes, ...] | None:
    """The attestation set (ascending ids) a validator finally votes for (PROTOCOL.md §5).

    Among the sets that prevotes from MORE than 1 - finality fraction of the stake name (one
    prevote per validator, the first given), the one with the most attestations, ties by the
    larger id list; if no set has that much, the validator's ``own`` prevote set (None: it
    has none and does not vote)."""
    seen: set[bytes] = set()
    stake: dict[tuple[bytes, ...], int] = {}
    for v in prevotes:
        if v.phase != PREVOTE or v.validator in seen or not cfg.is_validator(v.validator):
            continue
        seen.add(v.validator)
        stake[v.attestations] = stake.get(v.attestations, 0) + cfg.stake_of(v.validator)
    heavy = [ids for ids, w in stake.items() if blocking(cfg, w)]
    if heavy:
        return max(heavy, key=lambda ids: (len(ids), ids))
    return own


DISAGREEMENT_FLOOR: Final = 58982
"""u16 agreement (0.9) below which an attestation disagrees with the certified result."""
DISAGREEMENT_ROUNDS: Final = 3
"""How many of the latest certified results `disagreeing` looks at."""


def disagreeing(results: Sequence[RoundResult]) -> frozenset[bytes]:
    """Validators whose attestations keep disagreeing with certified results: among the last
    DISAGREEMENT_ROUNDS of ``results`` (in round order), every one that used its attestation
    has its agreement below DISAGREEMENT_FLOOR (and at least one did)."""
    seen: dict[bytes, list[int]] = {}
    for r in results[-DISAGREEMENT_ROUNDS:]:
        for v, a in r.agreement:
            seen.setdefault(v, []).append(a)
    return frozenset(v for v, agree in seen.items() if max(agree) < DISAGREEMENT_FLOOR)


def verify_certificate(cfg: NetworkConfig, cert: Certificate) -> None:
    """Check a certificate against the network config alone; raises CertificateError.

    Its result must be of this network and round, name at least one encoder and have used the
    attestations of MORE than finality_num/finality_den of the stake (`result_problem`);
    every vote must be a valid precommit signature over the result's digest by a distinct
    validator; and the signers must hold MORE than that fraction (`finality_reached`).
    """
    if cert.network_id != cfg.network_id or cert.result.network_id != cfg.network_id:
        raise CertificateError(CertificateReason.WRONG_NETWORK)
    if cert.result.round != cert.round:
        raise CertificateError(CertificateReason.WRONG_ROUND, "the result is of another round")
    problem = result_problem(cfg, cert.result)
    if problem is not None:
        raise problem
    digest = result_digest(cert.result)
    signers: set[bytes] = set()
    signed = 0
    for validator, signature in cert.votes:
        if validator in signers:
            raise CertificateError(CertificateReason.DUPLICATE_SIGNER, validator.hex())
        if not cfg.is_validator(validator):
            raise CertificateError(CertificateReason.UNKNOWN_SIGNER, validator.hex())
        vote = FinalityVote(cfg.network_id, cert.round, validator, PRECOMMIT, (), digest, signature)
        if not signature_valid(vote):
            raise CertificateError(CertificateReason.BAD_SIGNATURE, validator.hex())
        signers.add(validator)
        signed += cfg.stake_of(validator)
    c = cfg.consensus
    if not finality_reached(cfg, signed):
        raise CertificateError(
            CertificateReason.INSUFFICIENT_STAKE,
            f"{signed} of {cfg.total_stake} is not more than {c.finality_num}/{c.finality_den}",
        )
