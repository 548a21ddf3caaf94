"""Consensus rules: κ-median robustness, result determinism, certificate verification."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import (
    CertificateError,
    MissingEmbeddings,
    compute_result,
    kappa_median,
    quantise,
    verify_certificate,
)
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.result import RoundResult, decode_result, encode_result, result_digest
from dlnet.protocol.scoring import weighted_embedding
from dlnet.protocol.wire import Attestation, Certificate, sign_attestation, sign_vote

HALF = Fraction(1, 2)
U16 = st.integers(0, 65535)


def keys(n: int, base: int = 1) -> list[SigningKey]:
    return [SigningKey.from_seed(bytes([base + i]) * 32) for i in range(n)]


def config(validators: list[SigningKey], stakes: list[int]) -> NetworkConfig:
    return default_config(
        [ValidatorEntry(k.public_key, s) for k, s in zip(validators, stakes, strict=True)],
        1_800_000_000,
        dataset_sha256=bytes(32),
    )


def attest(
    cfg: NetworkConfig,
    key: SigningKey,
    encoders: list[bytes],
    grid: np.ndarray,
    flags: np.ndarray | None = None,
) -> Attestation:
    flags = np.zeros(grid.shape, dtype=np.uint8) if flags is None else flags.astype(np.uint8)
    return sign_attestation(
        key,
        cfg.network_id,
        3,
        tuple(encoders),
        grid.astype("<u2").tobytes(),
        flags.tobytes(),
        bytes(32),
    )


def test_quantise_range_and_nan() -> None:
    assert quantise(float("nan")) == 0
    assert quantise(-1.0) == 0
    assert quantise(2.0) == 65535
    assert quantise(0.5) == 32768
    assert [quantise(x / 10) for x in range(11)] == sorted(quantise(x / 10) for x in range(11))


@settings(max_examples=300, deadline=None)
@given(
    honest=st.lists(st.tuples(U16, st.integers(1, 100)), min_size=1, max_size=6),
    liars=st.lists(st.tuples(U16, st.integers(1, 100)), max_size=6),
)
def test_less_than_half_the_stake_cannot_move_the_median(
    honest: list[tuple[int, int]], liars: list[tuple[int, int]]
) -> None:
    honest_stake = sum(s for _, s in honest)
    liar_stake = sum(s for _, s in liars)
    if liar_stake * 2 >= honest_stake + liar_stake:
        liars = []  # the property is about a minority; keep the honest majority
        liar_stake = 0
    values = [v for v, _ in honest] + [v for v, _ in liars]
    stakes = [s for _, s in honest] + [s for _, s in liars]
    c = kappa_median(values, stakes, HALF, honest_stake + liar_stake)
    assert min(v for v, _ in honest) <= c <= max(v for v, _ in honest)


@given(st.lists(st.tuples(U16, st.integers(1, 50)), min_size=1, max_size=8), st.integers(0, 200))
def test_median_is_a_value_or_zero_and_absent_stake_counts_as_zero(
    votes: list[tuple[int, int]], absent: int
) -> None:
    values = [v for v, _ in votes]
    stakes = [s for _, s in votes]
    total = sum(stakes) + absent
    c = kappa_median(values, stakes, HALF, total)
    assert c == 0 or c in values
    if absent * 2 > total:  # a majority that did not attest scores everything 0
        assert c == 0


def test_compute_result_is_deterministic_and_excludes_outliers() -> None:
    vals = keys(3)
    cfg = config(vals, [100, 100, 100])
    encoders = sorted(k.public_key for k in keys(3, base=50))
    grid = np.array([[60000, 30000, 5]] * cfg.shards_per_round)
    flags = np.array([[0, 0, 1]] * cfg.shards_per_round)
    atts = [attest(cfg, k, encoders, grid, flags) for k in vals]
    rng = np.random.default_rng(0)
    fulls = {
        (s, e): rng.standard_normal(cfg.dim).astype(np.float32)
        for s in range(cfg.shards_per_round)
        for e in encoders
    }
    a = compute_result(cfg, 3, atts, fulls, texts=(bytes(32),) * cfg.shards_per_round)
    b = compute_result(
        cfg,
        3,
        list(reversed(atts)),
        dict(reversed(list(fulls.items()))),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    assert encode_result(a) == encode_result(b)
    assert result_digest(a) == result_digest(b)
    assert a.ranking == (0, 1, 2)
    assert a.outliers[2] and not a.outliers[0]
    w = np.frombuffer(a.weighted[0], dtype="<f4")
    want = weighted_embedding(
        [60000, 30000],
        [fulls[(0, encoders[0])], fulls[(0, encoders[1])]],
        duplicate_cos=cfg.scoring.duplicate_cos,
    )
    assert w.tobytes() == want.tobytes()
    assert all(agree == 65535 for _, agree in a.agreement)
    # Without the outlier's embeddings the result is the same: it carries no weight.
    trimmed = {k: v for k, v in fulls.items() if k[1] != encoders[2]}
    assert encode_result(
        compute_result(cfg, 3, atts, trimmed, texts=(bytes(32),) * cfg.shards_per_round)
    ) == encode_result(a)
    with pytest.raises(MissingEmbeddings) as missing:
        compute_result(
            cfg,
            3,
            atts,
            {k: v for k, v in fulls.items() if k != (1, encoders[0])},
            texts=(bytes(32),) * cfg.shards_per_round,
        )
    assert missing.value.missing == ((1, encoders[0]),)


def _result(cfg: NetworkConfig) -> RoundResult:
    encoders = sorted(k.public_key for k in keys(2, base=70))
    grid = np.array([[40000, 20000]] * cfg.shards_per_round)
    vals = [k for k in keys(4) if cfg.is_validator(k.public_key)]
    atts = [attest(cfg, k, encoders, grid) for k in vals]
    fulls = {
        (s, e): np.ones(cfg.dim, dtype=np.float32)
        for s in range(cfg.shards_per_round)
        for e in encoders
    }
    return compute_result(cfg, 3, atts, fulls, texts=(bytes(32),) * cfg.shards_per_round)


def _cert(cfg: NetworkConfig, result: RoundResult, signers: list[SigningKey]) -> Certificate:
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, 3, digest).signature) for k in signers
    )
    return Certificate(cfg.network_id, 3, result, tuple(votes))


def test_certificate_needs_more_than_two_thirds_of_the_stake() -> None:
    vals = keys(3)
    cfg = config(vals, [100, 100, 100])
    result = _result(cfg)
    verify_certificate(cfg, _cert(cfg, result, vals))
    with pytest.raises(CertificateError) as exact:
        verify_certificate(cfg, _cert(cfg, result, vals[:2]))  # exactly 2/3
    assert exact.value.reason == "insufficient_stake"
    cfg2 = config(vals, [100, 100, 99])
    verify_certificate(cfg2, _cert(cfg2, _result(cfg2), vals[:2]))  # 200/299 > 2/3


def test_forged_duplicate_unknown_and_foreign_certificates_are_rejected() -> None:
    vals = keys(3)
    cfg = config(vals, [100, 100, 100])
    result = _result(cfg)
    good = _cert(cfg, result, vals)
    cases: dict[str, Certificate] = {}
    votes = list(good.votes)
    forged = votes.copy()
    forged[0] = (forged[0][0], bytes(64))
    cases["bad_signature"] = dataclasses.replace(good, votes=tuple(forged))
    cases["duplicate_signer"] = dataclasses.replace(good, votes=(votes[0], *votes))
    outsider = keys(1, base=99)[0]
    digest = result_digest(result)
    stranger = (outsider.public_key, sign_vote(outsider, cfg.network_id, 3, digest).signature)
    cases["unknown_signer"] = dataclasses.replace(good, votes=(*votes, stranger))
    other = dataclasses.replace(result, encoder_scores=(1, 1))
    cases["bad_signature "] = dataclasses.replace(good, result=other)  # votes over another digest
    cases["wrong_network"] = dataclasses.replace(good, network_id=bytes(32))
    for reason, cert in cases.items():
        with pytest.raises(CertificateError) as err:
            verify_certificate(cfg, cert)
        assert err.value.reason == reason.strip(), reason


def test_result_round_trips_and_its_digest_sees_every_field() -> None:
    vals = keys(3)
    cfg = config(vals, [1, 1, 1])
    result = _result(cfg)
    assert decode_result(encode_result(result)) == result
    digest = result_digest(result)
    changes = {
        "round": 4,
        "consensus": tuple(x + 1 for x in result.consensus),
        "ranking": tuple(reversed(result.ranking)),
        "attestations_digest": bytes(32),
        "agreement": result.agreement[:-1],
    }
    for name, value in changes.items():
        assert result_digest(dataclasses.replace(result, **{name: value})) != digest, name
    data = encode_result(result)
    for bad in (data + b"\x00", data[:-1], b"\x91\x01"):
        with pytest.raises(ValueError):
            decode_result(bad)
