"""Byzantine validators are bounded (issue 9, findings 3, 4, 5, 6): the pure rules of
protocol/consensus.py and the validator role's use of them, in-process (no network, no clock)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from signed import signed_round

from dlnet.node.byzantine import Byzantine, fake_keys
from dlnet.node.context import NodeContext
from dlnet.node.host import Host
from dlnet.node.ingest import Ingest
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.validator import ValidatorRole
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import (
    DISAGREEMENT_FLOOR,
    CertificateError,
    CertificateReason,
    MissingCommits,
    attestation_ids,
    compute_result,
    disagreeing,
    finality_reached,
    precommit_set,
    result_problem,
    round_trips,
    verify_certificate,
)
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import ConsensusParams, RegistrationParams
from dlnet.protocol.result import RoundResult, result_digest
from dlnet.protocol.wire import (
    MAX_ENCODERS,
    PRECOMMIT,
    PREVOTE,
    Attestation,
    Certificate,
    Embedding,
    FinalityVote,
    Kind,
    decode,
    encode,
    make_embedding,
    sign_attestation,
    sign_vote,
)

RND = 3


def keys(n: int, base: int = 1) -> list[SigningKey]:
    return [SigningKey.from_seed(bytes([base + i]) * 32) for i in range(n)]


def config(
    validators: list[SigningKey], stakes: list[int] | None = None, num: int = 2, den: int = 3
) -> NetworkConfig:
    stakes = stakes or [100] * len(validators)
    return default_config(
        [ValidatorEntry(k.public_key, s) for k, s in zip(validators, stakes, strict=True)],
        1_900_000_000,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),  # any nonce: no proof to compute
        dim=16,
        consensus=ConsensusParams(finality_num=num, finality_den=den),
    )


def attest(cfg: NetworkConfig, key: SigningKey, encoders: list[bytes], top: int) -> Attestation:
    n, shards = len(encoders), cfg.shards_per_round
    grid = np.array([[top - 1000 * i for i in range(n)]] * shards, dtype="<u2")
    return sign_attestation(
        key, cfg.network_id, RND, tuple(encoders), grid.tobytes(), bytes(shards * n), bytes(32)
    )


def fulls(cfg: NetworkConfig, encoders: Iterable[bytes]) -> dict[tuple[int, bytes], Any]:
    rng = np.random.default_rng(1)
    return {
        (s, e): rng.standard_normal(cfg.dim).astype(np.float32)
        for e in encoders
        for s in range(cfg.shards_per_round)
    }


def certify(cfg: NetworkConfig, result: RoundResult, signers: list[SigningKey]) -> Certificate:
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, RND, digest).signature) for k in signers
    )
    return Certificate(cfg.network_id, RND, result, tuple(votes))


# --- finding 3: made-up encoders neither void nor pad the result --------------------------------


@pytest.mark.parametrize("fakes", [10, MAX_ENCODERS])
def test_one_validator_listing_made_up_encoders_neither_voids_nor_pads(fakes: int) -> None:
    vals = keys(4)
    cfg = config(vals)
    real = sorted(k.public_key for k in keys(3, base=60))
    atts = [attest(cfg, k, real, 60000) for k in vals[:3]]
    liar = attest(cfg, vals[3], real, 60000)
    if fakes == MAX_ENCODERS:
        liar = Byzantine("fake-encoders").attestation(cfg, vals[3], liar)
    else:
        listed = sorted([*real, *fake_keys(RND, fakes)])
        liar = attest(cfg, vals[3], listed, 65000)
    assert len(liar.encoders) == len(real) + fakes or fakes == MAX_ENCODERS
    result = compute_result(
        cfg,
        RND,
        [*atts, liar],
        fulls(cfg, real),
        committed=set(real),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    assert result.encoders == tuple(real)
    assert round_trips(cfg, result)
    assert result_problem(cfg, result) is None
    verify_certificate(cfg, certify(cfg, result, vals))
    cert = decode(encode(certify(cfg, result, vals)), cfg, Kind.CERTIFICATE)
    assert isinstance(cert, Certificate) and cert.result == result


def test_encoders_listed_by_kappa_of_the_stake_stay_and_need_a_held_commit() -> None:
    vals = keys(4)
    cfg = config(vals)
    real = sorted(k.public_key for k in keys(3, base=60))
    # Two of four (exactly κ = 1/2) list the third encoder: it stays.
    atts = [attest(cfg, k, real if i < 2 else real[:2], 60000) for i, k in enumerate(vals)]
    result = compute_result(
        cfg, RND, atts, fulls(cfg, real), texts=(bytes(32),) * cfg.shards_per_round
    )
    assert result.encoders == tuple(real)
    with pytest.raises(MissingCommits) as missing:
        compute_result(
            cfg,
            RND,
            atts,
            fulls(cfg, real),
            committed=set(real[:2]),
            texts=(bytes(32),) * cfg.shards_per_round,
        )
    assert missing.value.encoders == (real[2],)


def test_inverted_scores_from_a_minority_do_not_move_the_result() -> None:
    vals = keys(4)
    cfg = config(vals)
    real = sorted(k.public_key for k in keys(3, base=60))
    honest = [attest(cfg, k, real, 60000) for k in vals[:3]]
    inverted = Byzantine("inverted").attestation(cfg, vals[3], attest(cfg, vals[3], real, 60000))
    base = compute_result(
        cfg,
        RND,
        [*honest, attest(cfg, vals[3], real, 60000)],
        fulls(cfg, real),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    bent = compute_result(
        cfg, RND, [*honest, inverted], fulls(cfg, real), texts=(bytes(32),) * cfg.shards_per_round
    )
    assert bent.consensus == base.consensus and bent.weighted == base.weighted
    agree = dict(bent.agreement)
    assert agree[vals[3].public_key] < DISAGREEMENT_FLOOR <= agree[vals[0].public_key]
    assert disagreeing([bent] * 3) == {vals[3].public_key}
    assert disagreeing([base] * 3) == frozenset()


# --- finding 5: one finality threshold -----------------------------------------------------------


class FakeHost:
    def __init__(self, pool: list[bytes]) -> None:
        self.pool = pool

    async def publish(self, topic: str, data: bytes) -> None:
        self.pool.append(data)


class FakeSync:
    """Sync against a shared pool of everything published (the whole network's messages)."""

    def __init__(self, ingest: Ingest, pool: list[bytes]) -> None:
        self.ingest, self.pool = ingest, pool

    async def fetch_round(self, kind: Kind, rnd: int, *, deadline: float | None = None) -> int:
        got = 0
        for data in list(self.pool):
            msg = decode(data, self.ingest.cfg)
            if not isinstance(msg, Certificate) and msg.round == rnd and _kind(msg) is kind:
                got += self.ingest.admit(data, kind, window=False).value == "new"
        return got

    async def fetch_commitments(
        self, wanted: Iterable[bytes], *, deadline: float | None = None
    ) -> int:
        return 0


def _kind(msg: object) -> Kind:
    return {Attestation: Kind.ATTESTATION, FinalityVote: Kind.VOTE}.get(type(msg), Kind.COMMIT)


def role(cfg: NetworkConfig, key: SigningKey, path: Path, pool: list[bytes]) -> ValidatorRole:
    store = Store.open(path)
    ingest = Ingest(cfg, store, lambda: float(cfg.genesis_time))
    ctx = NodeContext(
        cfg,
        tuple(f"item {i} of the corpus" for i in range(8)),  # the result names shard texts
        store,
        ingest,
        cast(Host, FakeHost(pool)),
        cast(SyncClient, FakeSync(ingest, pool)),
        logging.getLogger("test"),
    )
    return ValidatorRole(ctx, key)


def hold(v: ValidatorRole, messages: Iterable[Any]) -> None:
    for m in messages:
        v.ctx.ingest.admit_own(m, encode(m))


def test_a_validator_never_stores_a_certificate_its_verifier_rejects(tmp_path: Path) -> None:
    vals = keys(4)
    cfg = config(vals, num=3, den=4)  # final needs MORE than 3/4: 3 of 4 equal is not enough
    assert not finality_reached(cfg, 300) and finality_reached(cfg, 301)
    real = sorted(k.public_key for k in keys(2, base=60))
    result = compute_result(
        cfg,
        RND,
        [attest(cfg, k, real, 60000) for k in vals],
        fulls(cfg, real),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    v = role(cfg, vals[0], tmp_path / "v.sqlite", [])
    digest = result_digest(result)
    for signers in (vals[:3], vals):
        hold(v, [sign_vote(k, cfg.network_id, RND, digest) for k in signers])
        cert = v._certificate(RND, result)
        try:
            verify_certificate(cfg, certify(cfg, result, signers))
            verified = True
        except CertificateError:
            verified = False
        assert (cert is not None) == verified
        if cert is not None:
            verify_certificate(cfg, cert)
    v.ctx.store.close()


# --- finding 6: an empty or under-attested result is never final ------------------------------


def test_empty_and_under_attested_results_are_not_final() -> None:
    vals = keys(4)
    cfg = config(vals)
    real = sorted(k.public_key for k in keys(2, base=60))
    empty = compute_result(
        cfg,
        RND,
        [attest(cfg, k, [], 0) for k in vals],
        {},
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    assert empty.encoders == ()
    with pytest.raises(CertificateError) as err:
        verify_certificate(cfg, certify(cfg, empty, vals))
    assert err.value.reason is CertificateReason.EMPTY_RESULT
    # Attestations from two of four validators (1/2 of the stake): not enough, however signed.
    half = compute_result(
        cfg,
        RND,
        [attest(cfg, k, real, 60000) for k in vals[:2]],
        fulls(cfg, real),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    with pytest.raises(CertificateError) as err:
        verify_certificate(cfg, certify(cfg, half, vals))
    assert err.value.reason is CertificateReason.INSUFFICIENT_ATTESTATIONS
    three = compute_result(
        cfg,
        RND,
        [attest(cfg, k, real, 60000) for k in vals[:3]],
        fulls(cfg, real),
        texts=(bytes(32),) * cfg.shards_per_round,
    )
    verify_certificate(cfg, certify(cfg, three, vals))


# --- finding 4: validators agree on the attestation set ------------------------------------------


def _round_messages(cfg: NetworkConfig, encoders: list[SigningKey]) -> list[Any]:
    """Commits and reveals of ``encoders`` for RND (what every validator holds)."""
    out: list[Any] = []
    rng = np.random.default_rng(7)
    for k in encoders:
        commit, reveals = signed_round(cfg, k, RND, rng)
        out.extend([commit, *reveals])
    return out


def _three_of_four_holding(
    tmp_path: Path, last_score: int
) -> tuple[NetworkConfig, list[ValidatorRole]]:
    """4 equal validators, the last one not running: the three others hold the round's
    commits, reveals and all four attestations (the last scoring ``last_score``), except
    validator 2, which misses the last attestation."""
    vals = keys(4)
    cfg = config(vals)
    enc_keys = keys(3, base=60)
    real = sorted(k.public_key for k in enc_keys)
    pool: list[bytes] = []
    honest = [role(cfg, k, tmp_path / f"v{i}.sqlite", pool) for i, k in enumerate(vals[:3])]
    base = _round_messages(cfg, enc_keys)
    atts = [attest(cfg, k, real, 60000 - 7 * i) for i, k in enumerate(vals[:3])]
    atts.append(attest(cfg, vals[3], real, last_score))
    pool.extend(encode(m) for m in [*base, *atts])
    for i, v in enumerate(honest):
        hold(v, base)
        hold(v, atts[:3] if i == 2 else atts)
    return cfg, honest


def test_a_late_attestation_from_a_minority_cannot_split_the_votes(tmp_path: Path) -> None:
    """Finding 4: of 4 equal validators one attests late and never votes; two honest ones hold
    its attestation when they compute, one does not. All three precommit one result."""
    # The late attestation differs: with it the result differs; validator 2 misses it.
    cfg, honest = _three_of_four_holding(tmp_path, 20000)

    async def phases() -> None:
        for v in honest:
            assert await v._vote(RND, PREVOTE, None)
        prevotes = {v.me: v._votes(RND, PREVOTE) for v in honest}
        # The split of today's main: two prevoted over 4 attestations, one over 3.
        assert len({p.result_digest for ps in prevotes.values() for p in ps}) == 2
        for v in honest:
            await v.ctx.sync.fetch_round(Kind.VOTE, RND)
            await v.precommit(RND)
        for v in honest:
            await v.ctx.sync.fetch_round(Kind.VOTE, RND)

    trio.run(phases)
    certs = []
    for v in honest:
        raw = v.ctx.store.get_round_state(RND, "result")
        assert raw is not None
        from dlnet.protocol.result import decode_result

        cert = v._certificate(RND, decode_result(raw))
        assert cert is not None
        verify_certificate(cfg, cert)
        certs.append(cert)
        v.ctx.store.close()
    assert len({result_digest(c.result) for c in certs}) == 1
    assert len(certs[0].result.agreement) == 4  # the set with the late attestation won


@settings(max_examples=200, deadline=None)
@given(
    stakes=st.lists(st.integers(1, 50), min_size=3, max_size=9),
    split=st.data(),
)
def test_honest_validators_seeing_the_same_prevotes_pick_one_set(
    stakes: list[int], split: st.DataObject
) -> None:
    """However honest validators (> 2/3 of the stake) split between a set L and its superset
    H, and whatever the byzantine (< 1/3) prevote, every honest validator picks the same set,
    whatever its own prevote was: some set always carries > 1/3 of the stake."""
    vals = keys(len(stakes))
    cfg = config(vals, stakes)
    total = sum(stakes)
    byz = split.draw(st.lists(st.booleans(), min_size=len(stakes), max_size=len(stakes)))
    if 3 * sum(s for s, b in zip(stakes, byz, strict=True) if b) >= total:
        byz = [False] * len(stakes)
    low = (b"\x01" * 32,)
    high = (b"\x01" * 32, b"\x02" * 32)
    junk = (b"\x09" * 32,)
    prevotes: list[FinalityVote] = []
    own: dict[bytes, tuple[bytes, ...]] = {}
    for k, is_byz in zip(vals, byz, strict=True):
        ids = split.draw(st.sampled_from([low, high, junk] if is_byz else [low, high]))
        prevotes.append(
            sign_vote(k, cfg.network_id, RND, bytes(32), phase=PREVOTE, attestations=ids)
        )
        if not is_byz:
            own[k.public_key] = ids
    picks = {precommit_set(cfg, prevotes, mine) for mine in own.values()}
    assert len(picks) == 1 and picks <= {low, high}


def test_prevote_phase_is_signed_and_a_re_vote_is_not_equivocation(tmp_path: Path) -> None:
    vals = keys(3)
    cfg = config(vals)
    v = role(cfg, vals[0], tmp_path / "v.sqlite", [])
    ids = attestation_ids([attest(cfg, k, [], 0) for k in vals])
    pre = sign_vote(vals[1], cfg.network_id, RND, bytes(32), phase=PREVOTE, attestations=ids)
    post = sign_vote(vals[1], cfg.network_id, RND, b"\x01" * 32)
    assert post.phase == PRECOMMIT
    assert decode(encode(pre), cfg) == pre
    forged = dataclasses.replace(pre, attestations=ids[:1])
    assert decode(encode(pre), cfg) != forged
    hold(v, [pre, post])
    assert v.ctx.store.equivocators(RND) == set()
    assert v._votes(RND, PREVOTE) == [pre] and v._votes(RND, PRECOMMIT) == [post]
    v.ctx.store.close()


def test_finality_reached_is_the_certificate_threshold() -> None:
    vals = keys(3)
    for num, den in ((1, 2), (2, 3), (3, 4), (9, 10)):
        cfg = config(vals, [1, 1, 1], num, den)
        for stake in range(4):
            assert finality_reached(cfg, stake) == (Fraction(stake, 3) > Fraction(num, den))


def test_a_validator_holding_equivocation_evidence_still_votes(tmp_path: Path) -> None:
    """An equivocating encoder's commit is held: the result names it (κ of the stake listed it,
    with score 0 from whoever saw the evidence), and the validator with the evidence votes for
    that result instead of abstaining for a 'missing' commit."""
    vals = keys(4)
    cfg = config(vals)
    enc_keys = keys(3, base=60)
    real = sorted(k.public_key for k in enc_keys)
    base = _round_messages(cfg, enc_keys)
    cheat = enc_keys[0]
    second = make_embedding(
        cheat, cfg.network_id, RND, 0, 0, bytes(16), np.ones(cfg.dim, dtype=np.float32)
    )
    atts = [attest(cfg, k, real, 60000) for k in vals]
    pool = [encode(m) for m in [*base, *atts]]
    v = role(cfg, vals[0], tmp_path / "v.sqlite", pool)
    hold(v, [*base, second, *atts])
    assert v.ctx.store.equivocators(RND) == {cheat.public_key}

    async def prevote() -> bool:
        return await v._vote(RND, PREVOTE, None)

    assert trio.run(prevote)
    assert v.ctx.store.counters().get("validator:no_result_missing_commit", 0) == 0
    v.ctx.store.close()


def test_a_result_is_computed_once_per_attestation_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The precommit over the set the prevote used reuses its result; a validator that
    precommits over another set (it missed an attestation) computes that one too."""
    import dlnet.node.validator as validator_module

    _, honest = _three_of_four_holding(tmp_path, 60000 - 21)
    computed: dict[bytes, int] = {}
    real_compute = validator_module.compute_result

    def counting(cfg: NetworkConfig, rnd: int, atts: Any, *args: Any, **kw: Any) -> Any:
        me = current[0]
        computed[me] = computed.get(me, 0) + 1
        return real_compute(cfg, rnd, atts, *args, **kw)

    current = [b""]
    monkeypatch.setattr(validator_module, "compute_result", counting)

    async def phases() -> None:
        for v in honest:
            current[0] = v.me
            assert await v._vote(RND, PREVOTE, None)
        for v in honest:
            current[0] = v.me
            await v.ctx.sync.fetch_round(Kind.VOTE, RND)
            await v.precommit(RND)

    trio.run(phases)
    assert computed == {honest[0].me: 1, honest[1].me: 1, honest[2].me: 2}
    for v in honest:
        v.ctx.store.close()


def test_scoring_ahead_is_reused_until_something_arrives(tmp_path: Path) -> None:
    """A validator scores as soon as it holds every reveal; at the deadline that attestation
    is reused as long as its inputs are unchanged, and scored again once they changed (here
    the evidence of an equivocating encoder arrives)."""
    vals = keys(3)
    cfg = config(vals)
    enc_keys = keys(3, base=60)
    v = role(cfg, vals[0], tmp_path / "v.sqlite", [])
    messages = _round_messages(cfg, enc_keys)
    hold(v, messages)

    async def twice() -> tuple[Attestation, Attestation]:
        return await v.score(RND), await v.score(RND)

    early, at_deadline = trio.run(twice)
    assert at_deadline is early
    first = next(m for m in messages if isinstance(m, Embedding))
    twin = make_embedding(
        enc_keys[0], cfg.network_id, RND, first.shard, first.slot, bytes([1]) * 16, first.array()
    )
    hold(v, [twin])
    rescored = trio.run(v.score, RND)
    assert rescored is not early
    column = rescored.encoders.index(enc_keys[0].public_key)
    assert not rescored.score_matrix(cfg.shards_per_round)[:, column].any()
    v.ctx.store.close()
