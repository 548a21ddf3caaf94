"""The sync server (node/sync.py `answer`): what it serves from a real store, when, and how it
refuses malformed requests. The network side is exercised end to end in test_testnet_e2e."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from signed import signed_round
from trio.testing import MockClock

from dlnet.node.host import STALL_AFTER
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.sync import (
    HAVE_PREFIX,
    HEDGE,
    MAX_ANSWER_BYTES,
    MAX_HAVE,
    MAX_ITEMS,
    REQUEST_TIMEOUT,
    RETRY_EVERY,
    BadRequest,
    SyncClient,
    answer,
)
from dlnet.node.transport import RequestTimeout
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.result import RoundResult
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import (
    Certificate,
    Kind,
    encode,
    message_id,
    sign_commit,
    sign_schedule,
    sign_submission,
    topic,
)

GENESIS = 1_800_000_000


def pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def unpack(data: bytes) -> list[bytes]:
    items = msgpack.unpackb(data, raw=False)
    assert isinstance(items, list)
    return items


@pytest.fixture
def cfg() -> NetworkConfig:
    validator = SigningKey.from_seed(b"\x01" * 32)
    return default_config(
        [ValidatorEntry(validator.public_key, 1)],
        GENESIS,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),  # any nonce: no proof to compute
    )


class Held:
    """A store holding one encoder's commit and reveals of round 1, admitted as a node would."""

    def __init__(self, cfg: NetworkConfig, tmp: Path) -> None:
        self.cfg = cfg
        self.store = Store.open(tmp / "node.sqlite")
        start = round_times(cfg, 1).start
        ingest = Ingest(cfg, self.store, lambda: start + 1)
        key = SigningKey.from_seed(b"\x02" * 32)
        self.commit, self.reveals = signed_round(cfg, key, 1, np.random.default_rng(0))
        for msg in (self.commit, *self.reveals):
            assert ingest.admit(encode(msg), None) is Outcome.NEW

    def ask(self, request: object, now: float) -> list[bytes]:
        return unpack(answer(self.store, self.cfg, now, pack(request)))


@pytest.fixture
def held(cfg: NetworkConfig, tmp_path: Path) -> Held:
    return Held(cfg, tmp_path)


def test_reveals_are_served_only_after_their_commit_deadline(held: Held) -> None:
    """Serving a reveal before the commit deadline would let a copier commit to it."""
    times = round_times(held.cfg, 1)
    wanted = [e.commitment() for e in held.reveals[:3]]
    before = times.commit_deadline - 0.5
    assert held.ask(["commitments", wanted], before) == []
    assert held.ask(["round", int(Kind.EMBEDDING), 1], before) == []
    assert held.ask(["round", int(Kind.COMMIT), 1], before) == [encode(held.commit)]
    after = times.commit_deadline + 0.5
    assert held.ask(["commitments", wanted], after) == [encode(e) for e in held.reveals[:3]]
    assert held.ask(["round", int(Kind.EMBEDDING), 1], after) == [encode(e) for e in held.reveals]


def test_unknown_commitments_and_empty_ranges_answer_nothing(held: Held) -> None:
    later = round_times(held.cfg, 2).start
    assert held.ask(["commitments", [bytes(32), b"\xff" * 32]], later) == []
    assert held.ask(["round", int(Kind.VOTE), 1], later) == []
    assert held.ask(["round", int(Kind.COMMIT), 5], later) == []
    assert held.ask(["certificates", 0, 10], later) == []


def test_submissions_and_schedule_votes_are_served_by_round(held: Held) -> None:
    """What gossip missed of a round's submissions and schedule votes can be pulled (a
    validator before it votes the schedule, encoders and validators before they use it)."""
    cfg = held.cfg
    now = round_times(cfg, 1).start + 1
    ingest = Ingest(cfg, held.store, lambda: now)
    sub = sign_submission(SigningKey.from_seed(b"\x07" * 32), cfg.network_id, 2, ("a b c",))
    vote = sign_schedule(
        SigningKey.from_seed(b"\x01" * 32),
        cfg.network_id,
        2,
        ((message_id(encode(sub)), ("a b c",)),),
    )
    for msg in (sub, vote):
        assert ingest.admit(encode(msg), None) is Outcome.NEW
    assert held.ask(["round", int(Kind.SUBMISSION), 2], now) == [encode(sub)]
    assert held.ask(["round", int(Kind.SCHEDULE), 2], now) == [encode(vote)]
    assert held.ask(["round", int(Kind.SCHEDULE), 3], now) == []


def test_certificates_are_served_by_round_range(held: Held) -> None:
    for rnd in (3, 4, 9):
        held.store.put_certificate(rnd, f"cert {rnd}".encode())
    now = round_times(held.cfg, 10).start
    assert held.ask(["certificates", 4, 9], now) == [b"cert 4", b"cert 9"]
    assert held.ask(["certificates", 0, MAX_ITEMS - 1], now) == [b"cert 3", b"cert 4", b"cert 9"]


MALFORMED = [
    (b"\xc1", "malformed"),
    (pack({"commitments": []}), "malformed"),
    (pack([]), "malformed"),
    (pack([7, 1]), "malformed"),
    (pack(["fetch_everything"]), "unknown_op"),
    (pack(["commitments"]), "malformed"),
    (pack(["commitments", [b"short"]]), "malformed"),
    (pack(["commitments", [bytes(32)] * (MAX_ITEMS + 1)]), "malformed"),
    (pack(["round", 2]), "malformed"),
    (pack(["round", 5, 1]), "malformed"),
    (pack(["round", 1, -1]), "malformed"),
    (pack(["round", True, 1]), "malformed"),
    (pack(["round", 1, 1, b"not a list"]), "malformed"),
    (pack(["round", 1, 1, [b"short"]]), "malformed"),
    (pack(["round", 1, 1, [bytes(HAVE_PREFIX)] * (MAX_HAVE + 1)]), "malformed"),
    (pack(["round", 1, 1, [], []]), "malformed"),
    (pack(["certificates", 5, 4]), "malformed"),
    (pack(["certificates", 0, MAX_ITEMS]), "malformed"),
    (b"\x91" + b"\xda\xff\xff" + b"x" * 70_000, "oversize"),
]


@pytest.mark.parametrize(("request_bytes", "reason"), MALFORMED)
def test_malformed_requests_raise_bad_request_with_a_reason(
    held: Held, request_bytes: bytes, reason: str
) -> None:
    with pytest.raises(BadRequest, match=f"^{reason}$"):
        answer(held.store, held.cfg, round_times(held.cfg, 2).start, request_bytes)


def test_a_round_request_leaves_out_what_the_asker_holds(held: Held) -> None:
    after = round_times(held.cfg, 1).commit_deadline + 1
    everything = [encode(e) for e in held.reveals]
    held_ids = [message_id(d)[:HAVE_PREFIX] for d in everything[:7]]
    asked = ["round", int(Kind.EMBEDDING), 1, held_ids]
    assert held.ask(asked, after) == everything[7:]
    mine = [message_id(encode(held.commit))[:HAVE_PREFIX]]
    assert held.ask(["round", int(Kind.COMMIT), 1, mine], after) == []
    assert held.ask(["round", int(Kind.COMMIT), 1, [bytes(HAVE_PREFIX)]], after) == [
        encode(held.commit)
    ]
    assert held.ask(["round", int(Kind.COMMIT), 1, []], after) == [encode(held.commit)]


def test_a_round_fetch_names_what_it_holds_so_no_peer_sends_it_again(
    held: Held, tmp_path: Path
) -> None:
    """Five peers answer from a full store: the first answer brings every reveal, and the next
    asks name them, so nothing travels twice (commit pulls used to bring every held commit back
    from every peer, four times a round)."""
    after = round_times(held.cfg, 1).commit_deadline + 1
    client, host, _ = client_for(held, tmp_path, {p: [] for p in "abcde"})
    served: list[int] = []

    async def serve(peer: str, pid: str, data: bytes, timeout: float) -> bytes:
        host.asked.append(peer)
        body = answer(held.store, held.cfg, after, data)
        served.append(len(unpack(body)))
        return body

    host.request = serve  # type: ignore[method-assign]
    fetch = client.fetch_round
    got = trio.run(lambda: fetch(Kind.COMMIT, 1, deadline=client.ingest.now() + 5, everyone=True))
    assert got == 1 and len(host.asked) == 5
    assert sum(served) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_request_bytes_answer_or_raise_bad_request_only(data: bytes) -> None:
    cfg = default_config(
        [ValidatorEntry(SigningKey.from_seed(b"\x01" * 32).public_key, 1)],
        GENESIS,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),
    )
    store = Store.open(Path(":memory:"))
    try:
        items = unpack(answer(store, cfg, GENESIS + 1000.0, data))
        assert items == []
    except BadRequest:
        pass
    finally:
        store.close()


def test_an_answer_stays_inside_one_frame(held: Held) -> None:
    """A round with more reveals than fit in a frame is answered with a prefix, not refused."""
    big = b"x" * (MAX_ANSWER_BYTES // 3)
    for rnd in range(5):
        held.store.put_certificate(rnd, big)
    items = held.ask(["certificates", 0, 4], round_times(held.cfg, 10).start)
    assert items == [big, big, big]


class FakeHost:
    """The part of Host a SyncClient uses; each peer answers from a script (None: stalls)."""

    def __init__(self, answers: dict[str, list[bytes] | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.penalties: list[tuple[str, str]] = []
        self.keepers: set[str] = set()  # peers that join every topic, the embedding one too
        self.joined: dict[str, set[str]] = {}  # other peers in a topic, by topic
        self.stalled_until: dict[str, float] = {}

    def connected_peers(self) -> list[str]:
        return sorted(self.answers)

    def carriers(self, topic: str) -> list[str]:
        return sorted(self.keepers | self.joined.get(topic, set()))

    def note_stalled(self, peer: str) -> None:
        self.stalled_until[peer] = time.time() + 30

    def stalled(self, peer: str) -> bool:
        return self.stalled_until.get(peer, 0.0) > time.time()

    async def request(self, peer: str, pid: str, data: bytes, timeout: float) -> bytes:
        self.asked.append(peer)
        items = self.answers[peer]
        if items is None:
            await trio.sleep(timeout)
            if timeout >= STALL_AFTER:  # as the real host does
                self.note_stalled(peer)
            raise RequestTimeout(peer)
        return pack(items)

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        self.penalties.append((peer, reason))


def moving(start: float) -> Callable[[], float]:
    """A node clock that reads ``start`` at its first reading in a trio run and then goes
    with trio's clock (virtual under MockClock): sync deadlines pass as time goes by."""
    zero: list[float] = []

    def now() -> float:
        t = trio.current_time()
        zero.append(t) if not zero else None
        return start + t - zero[0]

    return now


def client_for(
    held: Held, tmp: Path, answers: dict[str, list[bytes] | None]
) -> tuple[SyncClient, FakeHost, Store]:
    store = Store.open(tmp / "client.sqlite")
    ingest = Ingest(held.cfg, store, moving(round_times(held.cfg, 1).start + 1))
    host = FakeHost(answers)
    return SyncClient(host, ingest, held.cfg.network_id), host, store  # type: ignore[arg-type]


def test_poisoned_and_unrequested_items_are_rejected_and_charged(
    held: Held, tmp_path: Path
) -> None:
    key = SigningKey.from_seed(b"\x05" * 32)
    n = held.cfg.shards_per_round * held.cfg.slots_per_shard
    hashes = tuple(bytes([i]) * 32 for i in range(n))
    poison = [
        b"\x91" * 500 + b"\xc0",  # nested 500 deep
        encode(sign_commit(key, held.cfg.network_id, 2**63, hashes)),  # round past MAX_ROUND
        encode(sign_commit(key, held.cfg.network_id, 51, hashes)),  # valid, round + 50
    ]
    client, host, store = client_for(
        held, tmp_path, {"poison": poison, "good": [encode(held.commit)]}
    )
    got = trio.run(lambda: client.fetch_round(Kind.COMMIT, 1, deadline=client.ingest.now() + 5))
    assert got == 1
    assert store.messages(Kind.COMMIT, 1) == [encode(held.commit)]
    assert store.messages(Kind.COMMIT, 51) == []
    assert host.penalties == [("poison", "sync_bad_item")] * 3
    counters = store.counters()
    assert counters["rejected:unrequested"] == 1
    assert counters["rejected:malformed"] == 1
    assert counters["rejected:bad_field"] == 1


def test_a_stalled_peer_costs_at_most_the_deadline_and_is_skipped_after(
    held: Held, tmp_path: Path
) -> None:
    wanted = [e.commitment() for e in held.reveals]
    answers: dict[str, list[bytes] | None] = {"stalled": None, "slow_but_none": []}
    client, host, store = client_for(held, tmp_path, answers)
    got = trio.run(
        lambda: client.fetch_commitments(
            wanted, deadline=client.ingest.now() + 2 * REQUEST_TIMEOUT
        ),
        clock=MockClock(autojump_threshold=0),
    )
    assert got == 0
    assert store.counters()["sync:peer_timeout"] == 1
    assert sorted(host.asked) == ["slow_but_none", "stalled"]
    host.answers["good"] = [encode(e) for e in held.reveals]
    host.asked.clear()
    got = trio.run(lambda: client.fetch_commitments(wanted, deadline=client.ingest.now() + 5))
    assert got == len(wanted)
    assert "stalled" not in host.asked
    # A timeout of the caller's own short deadline is no sign of a stalled peer.
    client, host, _ = client_for(held, tmp_path, {"late": None, "other": []})
    trio.run(lambda: client.fetch_commitments(wanted, deadline=client.ingest.now() + 0.1))
    assert "late" in host.asked
    host.asked.clear()
    trio.run(lambda: client.fetch_commitments(wanted, deadline=client.ingest.now() + 0.1))
    assert "late" in host.asked  # not skipped as stalled


def test_a_peer_that_answers_everything_is_the_only_one_asked(held: Held, tmp_path: Path) -> None:
    """Every peer holds the reveals: one answer is enough, and no other peer sends them again
    (asking all at once made every answer travel once per peer and clogged a testnet)."""
    wanted = [e.commitment() for e in held.reveals]
    everything = [encode(e) for e in held.reveals]
    client, host, _ = client_for(held, tmp_path, {p: everything for p in "abcdef"})
    got = trio.run(lambda: client.fetch_commitments(wanted, deadline=client.ingest.now() + 5))
    assert got == len(wanted)
    assert len(host.asked) == 1


def test_a_stalled_peer_delays_the_search_by_the_hedge_not_the_timeout(
    held: Held, tmp_path: Path
) -> None:
    wanted = [e.commitment() for e in held.reveals]
    half = len(wanted) // 2
    answers: dict[str, list[bytes] | None] = {
        "stalled": None,
        "first_half": [encode(e) for e in held.reveals[:half]],
        "second_half": [encode(e) for e in held.reveals[half:]],
    }
    client, host, _ = client_for(held, tmp_path, answers)

    async def fetch() -> tuple[int, float]:
        got = await client.fetch_commitments(wanted, deadline=client.ingest.now() + 60)
        return got, trio.current_time()

    got, virtual_elapsed = trio.run(fetch, clock=MockClock(autojump_threshold=0))
    assert got == len(wanted)
    # Each peer is asked once; the stalled one (whatever its turn) cost one hedge at most,
    # never its whole request timeout.
    assert len(host.asked) == len(set(host.asked))
    assert virtual_elapsed <= 2 * HEDGE < REQUEST_TIMEOUT


def test_certificates_outside_the_range_asked_are_unrequested(held: Held, tmp_path: Path) -> None:
    def cert(rnd: int) -> bytes:
        weighted = tuple(bytes(4 * held.cfg.dim) for _ in range(held.cfg.shards_per_round))
        result = RoundResult(
            held.cfg.network_id,
            rnd,
            (),
            (),
            (),
            (),
            (),
            weighted,
            (),
            bytes(32),
            (bytes(32),) * len(weighted),
        )
        return encode(Certificate(held.cfg.network_id, rnd, result, ()))

    def fetch(answers: dict[str, list[bytes] | None]) -> tuple[int, list[bytes], FakeHost]:
        client, host, _ = client_for(held, tmp_path, answers)
        kept: list[bytes] = []
        n = trio.run(
            lambda: client.fetch_certificates(
                0, 9, lambda d: kept.append(d) is None, deadline=client.ingest.now() + 5
            )
        )
        return n, kept, host

    # Peers are asked in parallel and the search stops at the first useful answer, so the
    # junk-sending peer is asked alone: both of its items are refused and charged to it.
    n, kept, host = fetch({"junk": [b"bad", cert(40)]})
    assert n == 0 and kept == []
    assert host.penalties == [("junk", "sync_bad_item")] * 2
    n, kept, host = fetch({"junk": [b"bad", cert(40)], "good": [cert(3)]})
    assert n == 1 and kept == [cert(3)]


def test_peers_that_keep_every_reveal_are_asked_before_encoders(held: Held, tmp_path: Path) -> None:
    """An encoder holds only its own reveals: repair asks the embedding topic's carriers
    (validators, relays) first, whatever the random order of the rest."""
    wanted = [e.commitment() for e in held.reveals]
    everything = [encode(e) for e in held.reveals]
    for attempt in range(8):
        answers: dict[str, list[bytes] | None] = {f"encoder{i}": [] for i in range(4)}
        answers["keeper"] = everything
        (tmp_path / str(attempt)).mkdir()
        client, host, _ = client_for(held, tmp_path / str(attempt), answers)
        host.keepers = {"keeper"}
        got = trio.run(
            lambda c=client: c.fetch_commitments(wanted, deadline=c.ingest.now() + 5)  # type: ignore[misc]
        )
        assert got == len(wanted)
        assert host.asked == ["keeper"]


def test_a_round_fetch_asks_the_keepers_and_everyone_only_when_told(
    held: Held, tmp_path: Path
) -> None:
    """Validators and relays hold every gossiped message of a round; an encoder its own: a
    round fetch asks the keepers only, every peer when told (a validator's last commit pull)
    or when no keeper is connected."""
    peers: dict[str, list[bytes] | None] = {"enc0": [], "enc1": [], "k0": [], "k1": []}
    client, host, _ = client_for(held, tmp_path, peers)
    host.keepers = {"k0", "k1"}

    def fetch(everyone: bool) -> list[str]:
        host.asked.clear()
        now = client.ingest.now
        trio.run(lambda: client.fetch_round(Kind.COMMIT, 1, deadline=now() + 5, everyone=everyone))
        return sorted(host.asked)

    assert fetch(everyone=False) == ["k0", "k1"]
    assert fetch(everyone=True) == sorted(peers)
    # "Everyone" leaves out the other peers inside the kind's topic: they hold what its gossip
    # brought, as the keepers do (encoders and the submission topic); a peer outside it (a
    # client, an encoder and the commit topic) may hold the only copy of its own message.
    host.joined = {topic(held.cfg.network_id, Kind.COMMIT): {"enc0"}}
    assert fetch(everyone=True) == ["enc1", "k0", "k1"]
    host.keepers = set()
    assert fetch(everyone=False) == sorted(peers)  # no keeper: every peer
    host.keepers = {"k0", "k1"}
    host.joined = {}
    now = client.ingest.now
    for most in (1, 2):
        host.asked.clear()
        trio.run(lambda m=most: client.fetch_round(Kind.COMMIT, 1, deadline=now() + 5, most=m))  # type: ignore[misc]
        assert len(host.asked) == most and set(host.asked) <= {"k0", "k1"}


def test_two_stalled_keepers_asked_first_do_not_hold_the_repair_until_they_time_out(
    held: Held, tmp_path: Path
) -> None:
    """Two stopped validators fill both places for asks in flight: once their asks are
    STALE_ASK old, the next peer is asked (before, the search waited out their timeouts)."""
    wanted = [e.commitment() for e in held.reveals]
    answers: dict[str, list[bytes] | None] = {
        "stopped1": None,
        "stopped2": None,
        "good": [encode(e) for e in held.reveals],
    }
    client, host, _ = client_for(held, tmp_path, answers)
    host.keepers = {"stopped1", "stopped2"}  # asked first; "good" (say a relay) after them

    async def fetch() -> tuple[int, float]:
        got = await client.fetch_commitments(wanted, deadline=client.ingest.now() + 60)
        return got, trio.current_time()

    got, virtual_elapsed = trio.run(fetch, clock=MockClock(autojump_threshold=0))
    assert got == len(wanted)
    assert host.asked[2] == "good"
    assert virtual_elapsed < REQUEST_TIMEOUT  # not waiting out the stalled asks


def test_requests_before_genesis_are_answered_not_crashed(held: Held) -> None:
    """Before round 0 starts no round is open: a peer asking for reveals (a 100-encoder
    testnet's nodes repair as soon as they are up) gets an empty answer, not a traceback."""
    before = held.cfg.genesis_time - 10.0
    assert held.ask(["commitments", [e.commitment() for e in held.reveals]], before) == []
    assert held.ask(["round", int(Kind.EMBEDDING), 1], before) == []


def test_a_pull_until_held_asks_again_while_peers_answer_empty(held: Held, tmp_path: Path) -> None:
    """`fetch_round_until`: peers that do not hold a message yet answer empty (its publisher
    was cut off when it published); the pull asks again every RETRY_EVERY until it is held,
    and stops at the deadline when it never comes."""
    client, host, store = client_for(held, tmp_path, {"k0": [], "k1": []})
    host.keepers = {"k0", "k1"}
    spent: list[float] = []

    def have() -> bool:
        return bool(store.messages(Kind.COMMIT, 1))

    async def scenario() -> None:
        async def publisher_reconnects() -> None:
            await trio.sleep(RETRY_EVERY * 1.5)
            host.answers["k1"] = [encode(held.commit)]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher_reconnects)
            await client.fetch_round_until(Kind.COMMIT, 1, have, deadline=client.ingest.now() + 5)
        assert have() and host.asked.count("k1") >= 2
        host.answers["k1"] = []
        host.asked.clear()
        started = client.ingest.now()
        deadline = started + 2 * RETRY_EVERY
        await client.fetch_round_until(Kind.COMMIT, 2, lambda: False, deadline=deadline)
        spent.append(client.ingest.now() - started)

    trio.run(scenario, clock=MockClock(autojump_threshold=0))
    assert spent == [2 * RETRY_EVERY] and len(host.asked) >= 4
