"""Reveal push (node/reveals.py): batching, admission on the receiving side, acknowledgements,
and the pusher's view of stalled, lying and partial peers — in process, over a transport that
routes each request to the receiving node's handler. The real libp2p path runs in
test_testnet_e2e (every reveal is pushed there)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from signed import signed_round
from trio.testing import MockClock

from dlnet.node.context import NodeContext, TrioClock
from dlnet.node.encoder import EncoderRole
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.reveals import (
    FORWARD_WINDOW,
    MAX_DIRECT,
    MAX_PEER_ID_CHARS,
    MAX_PUSH_BYTES,
    MAX_PUSH_ITEMS,
    PUSH_GATHER,
    PUSH_TIMEOUT,
    RETRY,
    Forwarder,
    PushGroup,
    batches,
    install_server,
    parse_ack,
    push_body,
    receive,
)
from dlnet.node.store import Store
from dlnet.node.transport import RequestTimeout
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.rounds import RoundTimes, round_times
from dlnet.protocol.wire import Embedding, Kind, encode, make_embedding

GENESIS = 1_800_000_000
Handler = Callable[[bytes, str], Awaitable[bytes]]


def pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


@pytest.fixture
def cfg() -> NetworkConfig:
    validator = SigningKey.from_seed(b"\x01" * 32)
    return default_config(
        [ValidatorEntry(validator.public_key, 1)],
        GENESIS,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),
    )


def reveals(cfg: NetworkConfig, seed: int = 2) -> list[Embedding]:
    key = SigningKey.from_seed(bytes([seed]) * 32)
    return signed_round(cfg, key, 1, np.random.default_rng())[1]


async def push_reveals(host: object, ingest: Ingest, items: list[bytes], deadline: float) -> int:
    """One identity's push (a `PushGroup` of one)."""
    return await PushGroup(host, ingest).push(items, deadline)  # type: ignore[arg-type]


def node(cfg: NetworkConfig, path: Path) -> Ingest:
    """A node's admission, its clock in round 1's reveal phase."""
    reveal_time = round_times(cfg, 1).commit_deadline + 3
    return Ingest(cfg, Store.open(path), lambda: reveal_time)


class Transport:
    """Hosts in one process: each peer is a node's request handler, or None (it never
    answers), or raw bytes it answers with whatever is asked."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler | bytes | None] = {}
        self.penalties: list[tuple[str, str]] = []

    def host(self, name: str) -> PeerHost:
        return PeerHost(self, name)


class PeerHost:
    """The part of Host that node/reveals.py uses, for the node called ``name``."""

    def __init__(self, net: Transport, name: str) -> None:
        self.net = net
        self.name = name
        self.keepers: list[str] = []

    def set_request_handler(
        self, protocol_id: str, handler: Handler, *, max_request_bytes: int
    ) -> None:
        assert protocol_id.endswith("/reveal/2") and max_request_bytes == MAX_PUSH_BYTES
        self.net.handlers[self.name] = handler

    def carriers(self, topic: str) -> list[str]:
        assert topic.endswith("/embedding/1")
        return self.keepers

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        self.net.penalties.append((peer, reason))

    async def request(self, peer: str, pid: str, data: bytes, timeout: float) -> bytes:
        handler = self.net.handlers[peer]
        if handler is None:
            await trio.sleep(timeout)
            raise RequestTimeout(peer)  # (the real host notes the peer stalled)
        if isinstance(handler, bytes):
            return handler
        return await handler(data, self.name)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40_000), max_size=400))
def test_batches_keep_order_and_fit_one_push_each(sizes: list[int]) -> None:
    items = [b"x" * n for n in sizes]
    widest = frozenset(str(i).rjust(MAX_PEER_ID_CHARS, "Q") for i in range(MAX_DIRECT))
    out = batches(items)
    assert [i for b in out for i in b] == items
    for batch in out:
        assert batch and len(batch) <= MAX_PUSH_ITEMS
        assert len(push_body(batch, widest)) <= MAX_PUSH_BYTES


def test_a_push_is_admitted_item_by_item_and_a_resend_is_not_verified_again(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    ingest = node(cfg, tmp_path / "v.sqlite")
    items = [encode(e) for e in reveals(cfg)]
    assert receive(ingest, push_body(items, None)) == [Outcome.NEW] * len(items)
    assert receive(ingest, push_body(items, None)) == [Outcome.DUPLICATE] * len(items)
    counters = ingest.store.counters()
    assert counters["accepted:embedding"] == len(items)
    assert counters["push:duplicate"] == len(items)
    assert len(ingest.store.messages(Kind.EMBEDDING, 1)) == len(items)


def test_malformed_oversized_and_poisoned_pushes_are_refused_and_charged(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    ingest = node(cfg, tmp_path / "v.sqlite")
    net = Transport()
    install_server(net.host("v"), ingest)
    handler = net.handlers["v"]
    assert callable(handler)
    good = [encode(e) for e in reveals(cfg)]
    poison = [b"\x91" * 500 + b"\xc0", good[0][:-1] + bytes([good[0][-1] ^ 1])]

    async def main() -> None:
        assert await handler(pack({"not": "a list"}), "hostile") == pack([])
        assert await handler(pack(good), "hostile") == pack([])  # the items without the array
        assert await handler(pack([good, ["x" * (MAX_PEER_ID_CHARS + 1)]]), "hostile") == pack([])
        assert await handler(pack([good, [str(i) for i in range(MAX_DIRECT + 1)]]), "x") == pack([])
        assert await handler(push_body([b"x"] * (MAX_PUSH_ITEMS + 1), None), "hostile") == pack([])
        ack = parse_ack(await handler(push_body([*poison, good[1]], None), "hostile"), 3)
        assert ack == [False, False, True]

    trio.run(main)
    counters = ingest.store.counters()
    assert counters["rejected:push_malformed"] == 4
    assert counters["rejected:push_too_many"] == 1
    assert net.penalties.count(("hostile", "push_bad_item")) == 2
    assert ("hostile", "push_malformed") in net.penalties
    assert ingest.store.messages(Kind.EMBEDDING, 1) == [good[1]]


def test_equivocation_evidence_is_recorded_once_and_a_repeat_push_is_a_duplicate(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """An equivocator pushes a second reveal for a slot, and again every second while it is
    not acknowledged: the first is evidence (verified once, recorded once), every repeat is
    acknowledged as held, neither verified nor recorded again."""
    ingest = node(cfg, tmp_path / "v.sqlite")
    first = reveals(cfg)[0]
    twin = make_embedding(
        SigningKey.from_seed(bytes([2]) * 32),
        cfg.network_id,
        first.round,
        first.shard,
        first.slot,
        bytes(16),
        first.array() * 2,
    )
    assert receive(ingest, push_body([encode(first)], None)) == [Outcome.NEW]
    assert receive(ingest, push_body([encode(twin)], None)) == [Outcome.EQUIVOCATION]
    verifies = ingest.verifies[Kind.EMBEDDING]
    for _ in range(3):
        assert receive(ingest, push_body([encode(twin)], None)) == [Outcome.DUPLICATE]
    assert ingest.verifies[Kind.EMBEDDING] == verifies
    assert ingest.store.counters()["evidence:equivocation_embedding"] == 1


def test_acks_are_exactly_n_booleans() -> None:
    assert parse_ack(pack([True, False]), 2) == [True, False]
    assert parse_ack(pack([True, False]), 3) is None
    assert parse_ack(pack([1, 0]), 2) is None
    assert parse_ack(b"\xc1", 0) is None


def test_every_keeper_gets_the_push_and_a_stalled_or_lying_one_is_not_counted(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    net = Transport()
    nodes = {name: node(cfg, tmp_path / f"{name}.sqlite") for name in ("v1", "v2")}
    for name, ingest in nodes.items():
        install_server(net.host(name), ingest)
    net.handlers["stalled"] = None
    net.handlers["liar"] = pack([True])  # one boolean for a many-item push
    encoder = node(cfg, tmp_path / "e.sqlite")
    host = net.host("e")
    host.keepers = ["liar", "stalled", "v1", "v2"]
    items = [encode(e) for e in reveals(cfg)]

    async def main() -> tuple[int, float]:
        acked = await push_reveals(host, encoder, items, encoder.now() + 60)
        return acked, trio.current_time()

    acked, elapsed = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert acked == 2
    assert elapsed <= PUSH_TIMEOUT + 1  # the stalled peer costs one timeout, all in parallel
    for ingest in nodes.values():
        assert sorted(ingest.store.messages(Kind.EMBEDDING, 1)) == sorted(items)
    counters = encoder.store.counters()
    assert counters["push:peer_timeout"] == 1
    assert counters["push:bad_ack"] == 1
    assert ("liar", "push_bad_ack") in net.penalties


def test_a_peer_that_holds_only_part_of_a_push_does_not_acknowledge_it(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """A receiver outside the round window ignores the reveals: no acknowledgement, so the
    encoder knows they are not held there."""
    net = Transport()
    late = Ingest(cfg, Store.open(tmp_path / "late.sqlite"), lambda: round_times(cfg, 9).start)
    install_server(net.host("late"), late)
    host = net.host("e")
    host.keepers = ["late"]
    encoder = node(cfg, tmp_path / "e.sqlite")
    items = [encode(e) for e in reveals(cfg)]
    acked = trio.run(lambda: push_reveals(host, encoder, items, encoder.now() + 5))
    assert acked == 0
    assert encoder.store.counters()["push:partly_held"] == 1


def keeper_mesh(
    cfg: NetworkConfig, tmp: Path, keepers: tuple[str, ...]
) -> tuple[Transport, dict[str, Ingest], dict[str, Forwarder]]:
    """Keepers connected to each other, each taking pushes with a forwarder (to be run)."""
    net = Transport()
    nodes = {name: node(cfg, tmp / f"{name}.sqlite") for name in keepers}
    forwarders = {}
    for name, ingest in nodes.items():
        host = net.host(name)
        host.keepers = [k for k in keepers if k != name]
        forwarders[name] = Forwarder(host, ingest)  # type: ignore[arg-type]
        install_server(host, ingest, forwarder=forwarders[name])  # type: ignore[arg-type]
    return net, nodes, forwarders


def test_a_keeper_forwards_an_encoders_push_once_to_its_other_keepers(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """The encoder reaches v1 only; v1 forwards what was new to it to v2 and v3 in one
    window, and they forward nothing further (it came from a keeper). A second push of the
    same reveals is not forwarded again."""
    net, nodes, forwarders = keeper_mesh(cfg, tmp_path, ("v1", "v2", "v3"))
    encoder = node(cfg, tmp_path / "e.sqlite")
    host = net.host("e")
    host.keepers = ["v1"]
    items = [encode(e) for e in reveals(cfg)]

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for forwarder in forwarders.values():
                nursery.start_soon(forwarder.run)
            assert await push_reveals(host, encoder, items, encoder.now() + 60) == 1
            await trio.sleep(FORWARD_WINDOW + 0.01)
            forwarded_at = trio.current_time()
            assert await push_reveals(host, encoder, items, encoder.now() + 60) == 1
            await trio.sleep(10 * FORWARD_WINDOW)
            nursery.cancel_scope.cancel()
        return forwarded_at

    assert trio.run(main, clock=MockClock(autojump_threshold=0)) <= 2 * FORWARD_WINDOW
    for ingest in nodes.values():
        assert sorted(ingest.store.messages(Kind.EMBEDDING, 1)) == sorted(items)
    counts = {name: ingest.store.counters() for name, ingest in nodes.items()}
    assert counts["v1"]["push:forwarded"] == 2 * len(items)  # once to each other keeper
    assert "push:forwarded" not in counts["v2"] and "push:forwarded" not in counts["v3"]
    assert counts["v2"]["push:received"] == counts["v3"]["push:received"] == 1
    assert counts["v1"]["push:duplicate"] == len(items)  # the second push: held already


class EncoderHost(PeerHost):
    """An encoder's host: pushes go through the transport; gossip must not be used."""

    async def publish(self, topic: str, data: bytes) -> None:
        raise AssertionError("reveals are pushed, never gossiped")


def encoder_role(
    cfg: NetworkConfig, ingest: Ingest, host: EncoderHost, clock: TrioClock
) -> EncoderRole:
    ctx = NodeContext(cfg, (), ingest.store, ingest, host, None, clock=clock)  # type: ignore[arg-type]
    return EncoderRole(ctx, SigningKey.from_seed(b"\x02" * 32), None)  # type: ignore[arg-type]


def virtual_clock() -> TrioClock:
    """Wall time from now on, read off trio's clock: under ``MockClock(autojump_threshold=0)``
    the RETRY waits and push timeouts pass as soon as every task waits (no real sleeping)."""
    return TrioClock(time.time())


def test_an_unacknowledged_reveal_is_pushed_again_until_a_keeper_holds_it(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """No connected peer keeps reveals yet: the encoder pushes again every RETRY seconds;
    once a validator is connected, its push is acknowledged."""
    net = Transport()
    validator = node(cfg, tmp_path / "v.sqlite")
    install_server(net.host("v"), validator)
    clock = virtual_clock()
    encoder = Ingest(cfg, Store.open(tmp_path / "e.sqlite"), clock.now)  # the role's clock
    host = EncoderHost(net, "e")
    role = encoder_role(cfg, encoder, host, clock)
    items = [encode(e) for e in reveals(cfg)]
    now = clock.epoch
    times = RoundTimes(now - 10, now - 2, now + 1, now + 4 * RETRY, now + 7, now + 8)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect_later)
            return await role._reveal(items, times)

    async def connect_later() -> None:
        await trio.sleep(1.5 * RETRY)
        host.keepers = ["v"]

    assert trio.run(main, clock=MockClock(autojump_threshold=0)) == 1
    assert sorted(validator.store.messages(Kind.EMBEDDING, 1)) == sorted(items)
    counters = encoder.store.counters()
    assert counters["encoder:reveal_push_retried"] >= 1
    assert "encoder:reveal_push_unacked" not in counters


def test_a_reveal_no_keeper_takes_is_counted_unacknowledged(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    net = Transport()
    net.handlers["stalled"] = None
    clock = virtual_clock()
    encoder = Ingest(cfg, Store.open(tmp_path / "e.sqlite"), clock.now)  # the role's clock
    host = EncoderHost(net, "e")
    host.keepers = ["stalled"]
    items = [encode(e) for e in reveals(cfg)]
    now = clock.epoch
    times = RoundTimes(now - 10, now - 2, now + 1, now + 3 * RETRY, now + 7, now + 8)
    role = encoder_role(cfg, encoder, host, clock)
    reveal = role._reveal(items, times)
    assert trio.run(lambda: reveal, clock=MockClock(autojump_threshold=0)) == 0
    assert encoder.store.counters()["encoder:reveal_push_unacked"] == 1


def test_the_identities_of_a_process_push_together_and_each_learns_its_own_acks(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """Three identities of one process push within PUSH_GATHER: each keeper takes one push
    request with all their reveals (more only past MAX_PUSH_ITEMS), and each identity is told
    how many keepers hold all of its own reveals (a stalled keeper holds none)."""
    net = Transport()
    nodes = {name: node(cfg, tmp_path / f"{name}.sqlite") for name in ("v1", "v2")}
    requests: Counter[str] = Counter()
    for name, ingest in nodes.items():
        install_server(net.host(name), ingest)
        handler = net.handlers[name]
        assert callable(handler)

        async def counted(
            data: bytes, peer: str, name: str = name, inner: Handler = handler
        ) -> bytes:
            requests[name] += 1
            return await inner(data, peer)

        net.handlers[name] = counted
    net.handlers["stalled"] = None
    host = net.host("e")
    host.keepers = ["v1", "v2", "stalled"]
    encoder = node(cfg, tmp_path / "e.sqlite")
    group = PushGroup(host, encoder)  # type: ignore[arg-type]
    parts = [[encode(e) for e in reveals(cfg, seed)] for seed in (2, 3, 4)]
    got: dict[int, int] = {}

    async def main() -> None:
        async def one(i: int) -> None:
            await trio.sleep(i * PUSH_GATHER / 4)  # all within one gathering
            got[i] = await group.push(parts[i], encoder.now() + 60)

        async with trio.open_nursery() as nursery:
            for i in range(len(parts)):
                nursery.start_soon(one, i)

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert got == {0: 2, 1: 2, 2: 2}
    per_request = -(-sum(map(len, parts)) // MAX_PUSH_ITEMS)
    assert requests == {"v1": per_request, "v2": per_request}
    for ingest in nodes.values():
        held = sorted(ingest.store.messages(Kind.EMBEDDING, 1))
        assert held == sorted(item for part in parts for item in part)


def test_a_push_asked_while_a_gathering_is_sent_goes_with_the_next_one(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """A gathering's leader is busy pushing (a slow keeper) when another identity asks: that
    ask leads the next gathering and is acknowledged; a leader cancelled before it sends
    hands the lead on, so no ask waits forever."""
    net = Transport()
    fast = node(cfg, tmp_path / "v.sqlite")
    install_server(net.host("v"), fast)
    handler = net.handlers["v"]
    assert callable(handler)

    async def slow(data: bytes, peer: str) -> bytes:
        await trio.sleep(1.0)
        return await handler(data, peer)

    net.handlers["v"] = slow
    host = net.host("e")
    host.keepers = ["v"]
    encoder = node(cfg, tmp_path / "e.sqlite")
    group = PushGroup(host, encoder)  # type: ignore[arg-type]
    first, second, third = ([encode(e) for e in reveals(cfg, seed)] for seed in (2, 3, 4))
    got: dict[str, int] = {}

    async def main() -> None:
        async def ask(name: str, items: list[bytes], after: float) -> None:
            await trio.sleep(after)
            got[name] = await group.push(items, encoder.now() + 60)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "first", first, 0.0)
            nursery.start_soon(ask, "second", second, PUSH_GATHER + 0.5)  # during the push
            with trio.move_on_after(PUSH_GATHER + 0.6):  # cancelled while second waits
                await ask("cancelled", third, PUSH_GATHER + 0.55)
        assert not group._gathering._pending and not group._gathering._leading

    trio.run(main, clock=MockClock(autojump_threshold=0))
    assert got == {"first": 1, "second": 1}
    assert sorted(fast.store.messages(Kind.EMBEDDING, 1)) == sorted(first + second)


def test_one_keeper_an_encoder_pushes_to_forwards_and_only_to_keepers_it_did_not_reach(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    """The encoder reaches v1 and v2 of four keepers; the one it asks to forward sends each
    reveal once to v3 and v4 and not to the other keeper it reached, and nobody else forwards:
    every keeper takes each reveal once (no duplicates), over 2 rounds of picks."""
    net, nodes, forwarders = keeper_mesh(cfg, tmp_path, ("v1", "v2", "v3", "v4"))
    encoder = node(cfg, tmp_path / "e.sqlite")
    host = net.host("e")
    host.keepers = ["v1", "v2"]
    rounds = [[encode(e) for e in reveals(cfg, seed)] for seed in (2, 3)]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for forwarder in forwarders.values():
                nursery.start_soon(forwarder.run)
            for items in rounds:
                assert await push_reveals(host, encoder, items, encoder.now() + 60) == 2
            await trio.sleep(10 * FORWARD_WINDOW)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))
    everything = sorted(item for items in rounds for item in items)
    counts = {name: ingest.store.counters() for name, ingest in nodes.items()}
    for name, ingest in nodes.items():
        assert sorted(ingest.store.messages(Kind.EMBEDDING, 1)) == everything
        assert "push:duplicate" not in counts[name]
    forwarded = sum(c.get("push:forwarded", 0) for c in counts.values())
    assert forwarded == 2 * len(everything)  # each reveal to v3 and v4, once
    assert "push:forwarded" not in counts["v3"] and "push:forwarded" not in counts["v4"]
