"""The sync server (node/sync.py `answer`): what it serves from a real store, when, and how it
refuses malformed requests. The network side is exercised end to end in test_testnet_e2e."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.sync import MAX_ANSWER_BYTES, MAX_ITEMS, BadRequest, SyncClient, answer
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, encode, make_embedding, sign_commit

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
        [ValidatorEntry(validator.public_key, 1)], GENESIS, dataset_sha256=bytes(32)
    )


class Held:
    """A store holding one encoder's commit and reveals of round 1, admitted as a node would."""

    def __init__(self, cfg: NetworkConfig, tmp: Path) -> None:
        self.cfg = cfg
        self.store = Store.open(tmp / "node.sqlite")
        start = round_times(cfg, 1).start
        ingest = Ingest(cfg, self.store, lambda: start + 1)
        key = SigningKey.from_seed(b"\x02" * 32)
        rng = np.random.default_rng(0)
        n = cfg.shards_per_round * cfg.slots_per_shard
        self.reveals = [
            make_embedding(
                key,
                cfg.network_id,
                1,
                i // cfg.slots_per_shard,
                i % cfg.slots_per_shard,
                os.urandom(16),
                rng.standard_normal(cfg.dim).astype(np.float32),
            )
            for i in range(n)
        ]
        self.commit = sign_commit(
            key, cfg.network_id, 1, tuple(e.commitment() for e in self.reveals)
        )
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


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_request_bytes_answer_or_raise_bad_request_only(data: bytes) -> None:
    cfg = default_config(
        [ValidatorEntry(SigningKey.from_seed(b"\x01" * 32).public_key, 1)],
        GENESIS,
        dataset_sha256=bytes(32),
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


class ScriptedPeers(SyncClient):
    """A SyncClient whose peers answer from a script: the search logic, without a network."""

    def __init__(self, answers: dict[str, list[bytes]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def _peers(self) -> list[str]:
        return list(self.answers)

    async def _ask(self, peer: str, request: list[object]) -> list[bytes]:
        self.asked.append(peer)
        return self.answers[peer]


def test_certificate_search_goes_past_a_peer_that_sends_only_junk() -> None:
    client = ScriptedPeers({"junk": [b"bad", b"worse"], "empty": [], "good": [b"ok"], "late": []})
    kept = trio.run(client.fetch_certificates, 0, 9, lambda data: data == b"ok")
    assert kept == 1
    assert client.asked == ["junk", "empty", "good"]
