"""Submissions: the wire kinds and their typed rejects, admission (quota, window, duplicates),
the schedule rule (hypothesis properties) and the offline proof of consensus embeddings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.submissions import lookup
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.consensus import compute_result
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import round_tasks, text_digests
from dlnet.protocol.result import result_digest
from dlnet.protocol.rounds import round_times
from dlnet.protocol.submissions import (
    ProofError,
    capacity,
    fixed_schedule,
    order_key,
    placement,
    round_texts,
    schedule_time,
    select,
    target_round,
    verify_answer,
    vote_budget,
)
from dlnet.protocol.wire import (
    MAX_TEXT_BYTES,
    Certificate,
    Kind,
    Reject,
    RejectReason,
    Schedule,
    Submission,
    decode,
    encode,
    message_id,
    sign_attestation,
    sign_schedule,
    sign_submission,
    sign_vote,
)

VALIDATORS = [SigningKey.from_seed(bytes([i]) * 32) for i in (1, 2, 3)]
SUBMITTER = SigningKey.from_seed(b"\x09" * 32)
GENESIS = 1_800_000_000


def make_cfg(shards: int = 4) -> NetworkConfig:
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in VALIDATORS], GENESIS, dataset_sha256=bytes(32)
    )
    return replace(cfg, shards_per_round=shards) if shards != cfg.shards_per_round else cfg


CFG = make_cfg()
ITEMS = tuple(f"item {i} has a few words in it" for i in range(40))


def submission(texts: tuple[str, ...] = ("a cat sat", "dogs bark loud"), rnd: int = 9) -> bytes:
    return encode(sign_submission(SUBMITTER, CFG.network_id, rnd, texts))


def reason(data: bytes, cfg: NetworkConfig = CFG) -> RejectReason:
    with pytest.raises(Reject) as info:
        decode(data, cfg)
    return info.value.reason


# --- wire ---------------------------------------------------------------------------------------


def test_submission_and_schedule_round_trip() -> None:
    data = submission()
    sub = decode(data, CFG, Kind.SUBMISSION)
    assert isinstance(sub, Submission) and sub.texts == ("a cat sat", "dogs bark loud")
    sched = sign_schedule(VALIDATORS[0], CFG.network_id, 9, ((message_id(data), sub.texts),))
    assert decode(encode(sched), CFG, Kind.SCHEDULE) == sched


def test_submission_typed_rejects() -> None:
    assert capacity(CFG) == 2
    assert reason(submission(("a b", "c d", "e f"))) is RejectReason.TOO_MANY_TEXTS
    assert reason(submission(("x " * (MAX_TEXT_BYTES // 2 + 1),))) is RejectReason.OVERSIZE
    assert reason(submission(("oneword",))) is RejectReason.BAD_FIELD
    assert reason(submission(())) is RejectReason.BAD_FIELD
    other = replace(CFG, name="another-net")
    assert reason(submission(), other) is RejectReason.WRONG_NETWORK
    sub = sign_submission(SUBMITTER, CFG.network_id, 9, ("a cat sat",))
    forged = replace(sub, texts=("a dog sat",))
    assert reason(encode(forged)) is RejectReason.BAD_SIGNATURE


def test_schedule_typed_rejects() -> None:
    ids = sorted(bytes([i]) * 32 for i in (1, 2, 3, 4, 5))
    # A vote lists at most vote_budget = 2 x capacity = 4 texts.
    assert vote_budget(CFG) == 4
    four = sign_schedule(VALIDATORS[0], CFG.network_id, 9, tuple((i, ("a b",)) for i in ids[:4]))
    assert decode(encode(four), CFG) == four
    five = sign_schedule(VALIDATORS[0], CFG.network_id, 9, tuple((i, ("a b",)) for i in ids))
    assert reason(encode(five)) is RejectReason.BAD_FIELD
    over = sign_schedule(
        VALIDATORS[0],
        CFG.network_id,
        9,
        ((ids[0], ("a b",)), (ids[1], ("c d", "e f")), (ids[2], ("g h", "i j"))),
    )
    assert reason(encode(over)) is RejectReason.BAD_FIELD
    unsorted = sign_schedule(
        VALIDATORS[0], CFG.network_id, 9, ((ids[1], ("a b",)), (ids[0], ("a b",)))
    )
    assert reason(encode(unsorted)) is RejectReason.BAD_FIELD
    stranger = sign_schedule(SUBMITTER, CFG.network_id, 9, ((ids[0], ("a b",)),))
    assert reason(encode(stranger)) is RejectReason.NOT_VALIDATOR


# --- admission ----------------------------------------------------------------------------------


@pytest.fixture
def ingest(tmp_path: Path) -> Ingest:
    now = round_times(CFG, 8).start + 1
    return Ingest(CFG, Store.open(tmp_path / "node.sqlite"), lambda: now)


def test_admission_quota_duplicate_and_window(ingest: Ingest) -> None:
    first = submission()
    assert ingest.admit(first, Kind.SUBMISSION) is Outcome.NEW
    assert ingest.admit(first, Kind.SUBMISSION) is Outcome.DUPLICATE
    # One submission per key and round: a second, different one is over the quota.
    assert ingest.admit(submission(("other texts here",)), Kind.SUBMISSION) is Outcome.REJECTED
    assert ingest.check(Kind.SUBMISSION, submission(("yet another one",))).name == "REJECT"
    # The same key may submit for another round; rounds already started are closed.
    assert ingest.admit(submission(rnd=10), Kind.SUBMISSION) is Outcome.NEW
    assert ingest.admit(submission(rnd=7), Kind.SUBMISSION) is Outcome.IGNORED
    assert ingest.admit(submission(rnd=8 + 17), Kind.SUBMISSION) is Outcome.IGNORED
    # Hostile input: another network's, oversize bytes, a forged signature.
    other = encode(sign_submission(SUBMITTER, replace(CFG, name="x").network_id, 9, ("a b",)))
    assert ingest.admit(other, Kind.SUBMISSION) is Outcome.REJECTED
    assert ingest.admit(b"\x96" + bytes(70_000), Kind.SUBMISSION) is Outcome.REJECTED
    forged = replace(decode(first, CFG, Kind.SUBMISSION), texts=("a dog sat",))
    assert ingest.admit(encode(forged), Kind.SUBMISSION) is Outcome.REJECTED  # type: ignore[arg-type]
    # A flood from one key: one submission per round is kept, every other is a counted reject.
    flood = [submission((f"flood text {i}",), rnd=11) for i in range(30)]
    assert ingest.admit(flood[0], Kind.SUBMISSION) is Outcome.NEW
    assert {ingest.check(Kind.SUBMISSION, d).name for d in flood[1:]} == {"REJECT"}
    assert len(ingest.store.messages(Kind.SUBMISSION, 11)) == 1
    counters = ingest.store.counters()
    assert counters["rejected:over_quota"] == 2 + 29
    assert counters["rejected:wrong_network"] == 1 and counters["rejected:oversize"] == 1
    assert counters["rejected:bad_signature"] == 1
    assert counters["ignored:old_round"] == 1 and counters["ignored:future_round"] == 1
    assert counters["accepted:submission"] == 3


# --- the rule -----------------------------------------------------------------------------------

keys = st.integers(10, 40).map(lambda i: SigningKey.from_seed(bytes([i]) * 32))
text_lists = st.lists(st.sampled_from(["a b", "c d e", "f g h i"]), min_size=1, max_size=4)


@st.composite
def held_sets(draw: st.DrawFn) -> tuple[NetworkConfig, int, list[tuple[bytes, Submission]]]:
    cfg = make_cfg(draw(st.integers(1, 12)))
    rnd = draw(st.integers(0, 50))
    cap = max(capacity(cfg), 1)
    out = []
    for key, texts in draw(st.lists(st.tuples(keys, text_lists), max_size=8)):
        sub = sign_submission(
            key, cfg.network_id, draw(st.sampled_from([rnd, rnd + 1])), tuple(texts[:cap])
        )
        out.append((message_id(encode(sub)), sub))
    return cfg, rnd, out


@settings(max_examples=60, deadline=None)
@given(held_sets(), st.randoms())
def test_select_is_bounded_fair_and_order_free(
    case: tuple[NetworkConfig, int, list[tuple[bytes, Submission]]], rng: object
) -> None:
    cfg, rnd, held = case
    entries = select(cfg, rnd, held)
    shuffled = list(held)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert select(cfg, rnd, shuffled) == entries  # a function of the set, not of arrival
    by_id = dict(held)
    ids = [mid for mid, _ in entries]
    assert ids == sorted(set(ids))
    assert sum(len(t) for _, t in entries) <= vote_budget(cfg)
    assert sum(len(t) for _, t in select(cfg, rnd, held, capacity(cfg))) <= capacity(cfg)
    assert all(by_id[mid].round == rnd and by_id[mid].texts == t for mid, t in entries)
    submitters = [by_id[mid].submitter for mid in ids]
    assert len(submitters) == len(set(submitters))  # one per key and round
    # Nothing left out would still have fitted ahead of a submission taken after it.
    room = vote_budget(cfg) - sum(len(t) for _, t in entries)
    firsts = {}
    for mid, sub in held:
        if sub.round == rnd and (sub.submitter not in firsts or mid < firsts[sub.submitter][0]):
            firsts[sub.submitter] = (mid, sub)
    left = [(m, s) for m, s in firsts.values() if m not in ids]
    assert all(len(s.texts) > room for _, s in left)
    shards = placement(entries)
    total = sum(len(t) for _, t in entries)
    assert [s for mid in ids for s in shards[mid]] == list(range(total))


def test_order_key_decides_who_fits() -> None:
    cfg, rnd = CFG, 9
    subs = [
        sign_submission(SigningKey.from_seed(bytes([i]) * 32), cfg.network_id, rnd, ("a b", "c d"))
        for i in (50, 51, 52)
    ]
    held = [(message_id(encode(s)), s) for s in subs]
    winner = min(held, key=lambda p: order_key(cfg.network_id, rnd, p[0]))
    assert select(cfg, rnd, held, capacity(cfg)) == ((winner[0], ("a b", "c d")),)
    # A vote lists twice that; the schedule takes what fits the capacity, in the same order.
    assert len(select(cfg, rnd, held)) == 2
    votes = [sign_schedule(k, cfg.network_id, rnd, select(cfg, rnd, held)) for k in VALIDATORS]
    fixed = fixed_schedule(cfg, rnd, votes)
    assert fixed is not None and fixed.entries == ((winner[0], ("a b", "c d")),)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=0, max_size=3), st.permutations([0, 1, 2]))
def test_fixed_schedule_needs_more_than_two_thirds(choice: list[int], order: list[int]) -> None:
    sets: list[tuple[tuple[bytes, tuple[str, ...]], ...]] = [
        (),
        ((b"\x01" * 32, ("a b",)),),
        ((b"\x02" * 32, ("c d", "e f")),),
    ]
    votes = [
        sign_schedule(VALIDATORS[v], CFG.network_id, 9, sets[c])
        for v, c in zip(order, choice, strict=False)
    ]
    fixed = fixed_schedule(CFG, 9, votes)
    # 3 equal stakes: more than 2/3 is all three, for the votes held and for each entry.
    assert (fixed is not None) == (len(choice) == 3)
    if fixed is not None:
        assert fixed.entries == (sets[choice[0]] if len(set(choice)) == 1 else ())
        assert fixed_schedule(CFG, 9, list(reversed(votes))) == fixed
    assert fixed_schedule(CFG, 10, votes) is None


def _sub(seed: int, texts: tuple[str, ...], cfg: NetworkConfig = CFG) -> tuple[bytes, Submission]:
    msg = sign_submission(SigningKey.from_seed(bytes([seed]) * 32), cfg.network_id, 9, texts)
    return message_id(encode(msg)), msg


def test_a_missed_or_equivocated_submission_is_left_out_alone() -> None:
    """Validators holding different submissions (one missed by gossip, a key that sent two
    different ones to different validators) still fix one schedule: each entry needs the
    support of more than 2/3 of the stake, so the contested ones drop out and the rest stay."""
    four = make_cfg(8)  # capacity 4, vote budget 8
    honest = _sub(70, ("a lighthouse keeper", "fresh warm bread"), four)
    missed = _sub(71, ("missed by one validator",), four)
    twin_a = _sub(72, ("first version here", "and its second text"), four)
    twin_b = _sub(72, ("another version here", "with other words"), four)
    held = [
        [honest, missed, twin_a],
        [honest, missed, twin_b],
        [honest, twin_a],  # missed `missed`
    ]
    votes = [
        sign_schedule(k, four.network_id, 9, select(four, 9, h))
        for k, h in zip(VALIDATORS, held, strict=True)
    ]
    fixed = fixed_schedule(four, 9, votes)
    assert fixed is not None
    assert [mid for mid, _ in fixed.entries] == [honest[0]]
    # Every node holding these votes computes the same, in any order and with duplicates.
    assert fixed_schedule(four, 9, [votes[2], votes[0], votes[1], votes[0]]) == fixed
    # A validator that lists an id with other texts than the submission's gives it no support.
    bent = ((honest[0], ("other texts", "than submitted")),)
    lying = [*votes[:2], sign_schedule(VALIDATORS[2], four.network_id, 9, bent)]
    again = fixed_schedule(four, 9, lying)
    assert again is not None and again.entries == ()


def test_an_equivocating_submitter_cannot_crowd_out_the_others() -> None:
    """Capacity 2: a key's two conflicting 2-text submissions each fill a round, but a vote
    lists up to twice the capacity, so every validator still lists the honest one."""
    honest = _sub(80, ("the honest submission",))
    twins = [_sub(81, ("twin one text", f"version {v} words")) for v in "ab"]
    votes = [
        sign_schedule(k, CFG.network_id, 9, select(CFG, 9, [honest, twins[i % 2]]))
        for i, k in enumerate(VALIDATORS)
    ]
    assert all(honest[0] in dict(v.entries) for v in votes)
    fixed = fixed_schedule(CFG, 9, votes)
    assert fixed is not None and fixed.entries == ((honest[0], honest[1].texts),)


def test_scheduled_texts_take_the_first_shards() -> None:
    sub = decode(submission(("a  cat\tsat", "dogs bark loud")), CFG, Kind.SUBMISSION)
    assert isinstance(sub, Submission)
    entries = ((message_id(encode(sub)), sub.texts),)
    texts = round_texts(CFG, entries)
    assert texts == ["a cat sat", "dogs bark loud"]
    plain = round_tasks(CFG, ITEMS, 9)
    tasks = round_tasks(CFG, ITEMS, 9, texts)
    assert [t.texts[0] for t in tasks[:2]] == texts and tasks[0].item == -1
    assert tasks[2:] == plain[2:]  # the corpus half is the round's own
    assert tasks[0].unit_counts[0] == 3
    assert round_tasks(CFG, ITEMS, 9, []) == plain


def test_target_round_leaves_the_margin() -> None:
    now = round_times(CFG, 5).start + 1
    r = target_round(CFG, now, 5.0)
    assert schedule_time(CFG, r) >= now + 5.0 > schedule_time(CFG, r - 1)


# --- the offline proof --------------------------------------------------------------------------


def certified_round(
    rnd: int, sub_data: bytes, zero: bool = False, scheduled: bool = True
) -> tuple[list[bytes], bytes]:
    """Schedule votes of all three validators listing ``sub_data`` and a certificate of round
    ``rnd`` whose weighted embeddings are per-shard vectors (all zeros with ``zero``: no
    encoder weighted) and whose texts are the round's with the submission scheduled (the
    corpus items only, without ``scheduled``: what validators lacking the schedule sign)."""
    sub = decode(sub_data, CFG, Kind.SUBMISSION)
    assert isinstance(sub, Submission)
    entries = ((message_id(sub_data), sub.texts),)
    votes = [encode(sign_schedule(k, CFG.network_id, rnd, entries)) for k in VALIDATORS]
    enc = sorted(SigningKey.from_seed(bytes([60 + i]) * 32).public_key for i in range(3))
    level = 0 if zero else 60000
    scores = np.full((CFG.shards_per_round, 3), level, dtype="<u2").tobytes()
    atts = [
        sign_attestation(k, CFG.network_id, rnd, tuple(enc), scores, bytes(4 * 3), bytes(32))
        for k in VALIDATORS
    ]
    rng = np.random.default_rng(1)
    fulls = {
        (s, e): rng.standard_normal(CFG.dim).astype(np.float32)
        for s in range(CFG.shards_per_round)
        for e in enc
    }
    placed = round_texts(CFG, entries) if scheduled else []
    texts = text_digests(round_tasks(CFG, ITEMS, rnd, placed))
    result = compute_result(CFG, rnd, atts, fulls, texts=texts)
    digest = result_digest(result)
    sigs = tuple(
        sorted(
            (k.public_key, sign_vote(k, CFG.network_id, rnd, digest).signature) for k in VALIDATORS
        )
    )
    return votes, encode(Certificate(CFG.network_id, rnd, result, sigs))


def test_verify_answer_proves_and_refuses_tampering() -> None:
    """The certificate alone binds each text to its embedding: the result names every shard's
    text, so a swapped text, shard or embedding is refused."""
    sub = submission(("a  cat sat", "dogs bark loud"))
    _, cert = certified_round(9, sub)
    proven = verify_answer(CFG, sub, cert, [0, 1])
    decoded = decode(cert, CFG, Kind.CERTIFICATE)
    assert isinstance(decoded, Certificate)
    assert [p.text for p in proven] == ["a cat sat", "dogs bark loud"]
    assert [p.vector for p in proven] == list(decoded.result.weighted[:2])
    assert not any(p.empty for p in proven)
    assert verify_answer(CFG, sub, cert, [0, 1], [p.vector for p in proven]) == proven
    # A tampered embedding in the answer.
    bad = bytearray(proven[0].vector)
    bad[0] ^= 1
    with pytest.raises(ProofError, match="differs"):
        verify_answer(CFG, sub, cert, [0, 1], [bytes(bad), proven[1].vector])
    # Swapped embeddings (the shard of another text), or swapped shards.
    with pytest.raises(ProofError, match="differs"):
        verify_answer(CFG, sub, cert, [0, 1], [proven[1].vector, proven[0].vector])
    with pytest.raises(ProofError, match="does not name text 0 in shard 1"):
        verify_answer(CFG, sub, cert, [1, 0])
    with pytest.raises(ProofError, match="does not name text 1 in shard 2"):
        verify_answer(CFG, sub, cert, [0, 2])
    # A submission with another text than the certified one (same key, same round).
    with pytest.raises(ProofError, match="does not name text 1"):
        verify_answer(CFG, submission(("a cat sat", "dogs bark")), cert, [0, 1])
    # A certificate of the round in which the validators scored the corpus items.
    _, corpus = certified_round(9, sub, scheduled=False)
    with pytest.raises(ProofError, match="does not name text 0"):
        verify_answer(CFG, sub, corpus, [0, 1])
    # A certificate of another round, or with a broken signature.
    _, other = certified_round(10, sub)
    with pytest.raises(ProofError, match="round"):
        verify_answer(CFG, sub, other, [0, 1])
    broken = decode(cert, CFG, Kind.CERTIFICATE)
    assert isinstance(broken, Certificate)
    sig = bytearray(broken.votes[0][1])
    sig[5] ^= 1
    forged = replace(broken, votes=((broken.votes[0][0], bytes(sig)), *broken.votes[1:]))
    with pytest.raises(ProofError, match="certificate"):
        verify_answer(CFG, sub, encode(forged), [0, 1])


def test_lookup_states(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.sqlite")
    ingest = Ingest(CFG, store, lambda: round_times(CFG, 8).start)
    sub = submission()
    assert ingest.admit(sub, Kind.SUBMISSION) is Outcome.NEW
    mid = message_id(sub)
    assert lookup(CFG, store, bytes(32), 0.0) is None
    assert lookup(CFG, store, mid, schedule_time(CFG, 9) - 1)["state"] == "pending"
    assert lookup(CFG, store, mid, schedule_time(CFG, 9) + 30)["state"] == "not_scheduled"
    votes, cert = certified_round(9, sub)
    later = Ingest(CFG, store, lambda: round_times(CFG, 9).start)
    for v in votes:
        assert later.admit(v, Kind.SCHEDULE) is Outcome.NEW
    assert lookup(CFG, store, mid, round_times(CFG, 9).start)["state"] == "scheduled"
    store.put_certificate(9, cert)
    store.put_round_outcome(9, True, bytes(32))
    answer = lookup(CFG, store, mid, round_times(CFG, 10).start)
    assert answer is not None and answer["state"] == "final"
    assert [e["empty"] for e in answer["embeddings"]] == [False, False]
    proven = verify_answer(
        CFG,
        bytes.fromhex(answer["submission"]),
        bytes.fromhex(answer["certificate"]),
        answer["shards"],
        [bytes.fromhex(e["float32_le_hex"]) for e in answer["embeddings"]],
    )
    assert [p.shard for p in proven] == [0, 1]
    assert isinstance(decode(bytes.fromhex(answer["schedule"][0]), CFG), Schedule)


def test_a_zero_consensus_embedding_is_never_handed_out_as_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A final round whose certified vector for a text is all zeros (nothing checked, nothing
    weighted): the node answers ``no_embedding`` and `dlnet embeddings` refuses in one line,
    exit 1, even when a node claims ``final``."""
    import json

    from dlnet.node.cli import main
    from dlnet.protocol.config import dump_config

    store = Store.open(tmp_path / "node.sqlite")
    ingest = Ingest(CFG, store, lambda: round_times(CFG, 8).start)
    sub = submission()
    assert ingest.admit(sub, Kind.SUBMISSION) is Outcome.NEW
    _, cert = certified_round(9, sub, zero=True)
    store.put_certificate(9, cert)
    store.put_round_outcome(9, True, bytes(32))
    answer = lookup(CFG, store, message_id(sub), round_times(CFG, 10).start)
    assert answer is not None and answer["state"] == "no_embedding"
    assert [e["empty"] for e in answer["embeddings"]] == [True, True]
    (tmp_path / "network.toml").write_text(dump_config(CFG))
    cfg = str(tmp_path / "network.toml")
    lying = dict(answer, state="final")
    (tmp_path / "answer.json").write_text(json.dumps([lying]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["embeddings", "--verify", str(tmp_path / "answer.json"), "--config", cfg])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1
    assert len(err) == 1 and "certified no embedding of 2 of its 2 texts" in err[0], err


# --- the API ------------------------------------------------------------------------------------


def test_api_post_and_get(tmp_path: Path) -> None:
    import httpx
    import trio

    from dlnet.node.api import NodeView, build_app

    store = Store.open(tmp_path / "node.sqlite")
    now = round_times(CFG, 8).start + 1
    ingest = Ingest(CFG, store, lambda: now)
    published: list[bytes] = []

    async def submit(data: bytes) -> Outcome:
        outcome = ingest.admit(data, Kind.SUBMISSION)
        if outcome is Outcome.NEW:
            published.append(data)
        return outcome

    class Host:
        def __init__(self) -> None:
            self.peer_id = "12D3KooWStub"
            self.addrs: list[str] = []
            self.counters: dict[str, int] = {}

        def connected_peers(self) -> list[str]:
            return []

    view = NodeView(CFG, store, Host(), frozenset(), None, clock=lambda: now, submit=submit)

    async def main() -> None:
        transport = httpx.ASGITransport(app=build_app(view))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            signed = submission()
            r = await client.post("/v1/submissions", json={"message": signed.hex()})
            assert r.status_code == 202, r.text
            sid = r.json()["id"]
            assert sid == message_id(signed).hex() and r.json()["round"] == 9
            again = await client.post("/v1/submissions", json={"message": signed.hex()})
            assert again.status_code == 200 and again.json()["state"] == "duplicate"
            quota = await client.post(
                "/v1/submissions", json={"message": submission(("other words",)).hex()}
            )
            assert quota.status_code == 409 and "over_quota" in quota.json()["error"]
            many = await client.post("/v1/submissions", json={"texts": ["a b", "c d", "e f"]})
            assert many.status_code == 400 and "too_many_texts" in many.json()["error"]
            old = await client.post("/v1/submissions", json={"texts": ["a b"], "round": 2})
            assert old.status_code == 400 and "outside" in old.json()["error"]
            signed_here = await client.post("/v1/submissions", json={"texts": ["hello there"]})
            assert signed_here.status_code == 202
            assert signed_here.json()["round"] >= 9
            bad = await client.post("/v1/submissions", content=b"{not json")
            assert bad.status_code == 400
            got = await client.get(f"/v1/submissions/{sid}")
            assert got.status_code == 200 and got.json()["state"] == "pending"
            assert (await client.get("/v1/submissions/zz")).status_code == 400
            assert (await client.get("/v1/submissions/" + "0" * 64)).status_code == 404

    trio.run(main)
    assert len(published) == 2


# --- the commands' operator mistakes ------------------------------------------------------------


def test_submit_and_embeddings_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlnet.node.cli import main
    from dlnet.protocol.config import dump_config

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, capsys.readouterr().err

    (tmp_path / "network.toml").write_text(dump_config(CFG))
    cfg = str(tmp_path / "network.toml")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine text"}\n{"nope": 1}\n')
    (tmp_path / "one.txt").write_text("oneword\n")
    (tmp_path / "ok.txt").write_text("two words\n")
    free = "http://127.0.0.1:9"  # discard port: nothing listens there
    cases = [
        (("submit", "--file", str(tmp_path / "missing.txt")), "cannot read it"),
        (
            ("submit", "--file", str(tmp_path / "bad.jsonl")),
            'bad.jsonl:2: expected a string or an object with "text"',
        ),
        (
            ("submit", "--file", str(tmp_path / "one.txt")),
            "one.txt:1: a text needs 2 or more words",
        ),
        (("submit", "--file", str(tmp_path / "ok.txt")), "no answer"),
    ]
    for args, message in cases:
        key = str(tmp_path / "s.key")
        code, err = run(*args, "--api", free, "--config", cfg, "--key", key)
        assert code == 2 and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, err = run("embeddings", "--config", cfg)
    assert code == 2 and "--submission ID" in err
    code, err = run("embeddings", "--config", cfg, "--submission", "ab" * 32, "--api", free)
    assert code == 2 and "no answer" in err and len(err.strip().splitlines()) == 1
