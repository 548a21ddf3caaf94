"""Reveal push: an encoder hands its round's reveals to the nodes that keep them, as one
acknowledged request per peer, instead of flooding them over gossip (docs/PROTOCOL.md §5,
"Reveal push").

Only validators need reveals (relays keep them to serve repairs). Gossiping each 4 KB
embedding cost every node a libp2p delivery per copy — read, decrypt, parse, duplicate
check — and a round made E x slots x (N - 1) of them: at 24 encoders the validators' repair
overran and rounds came out empty (issue 11). A push is one stream per (encoder, peer) that
carries every reveal of the round (of every identity of the process: `PushGroup`), so the
transport cost is paid once per batch, and it is acknowledged item by item, so an encoder
knows its reveals are held instead of hoping gossip reached someone. Validators then fetch
what they still lack from each other by commitment (node/sync.py), in batches too.

The receivers are the encoder's connected peers that join the embedding topic (validators,
relays): gossipsub already tells who they are, and the outlet rule of peer upkeep keeps an
encoder connected to at least one of them (node/host.py). One of them, picked at random per
push, forwards what was new to it to the keepers the push did not reach (`Forwarder`): an
encoder process reaches 1-3 of the keepers, and at 100 encoders x 7 validators fetching the
rest by commitment left a third of the reveals missing after repair, while every reached
keeper forwarding made a validator take each reveal 2.8 times (docs/BENCHMARKS.md, scale
ladder).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgpack
import trio

from dlnet.node import counters as C
from dlnet.node.gather import Gathering
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.sync import unpack_bounded
from dlnet.node.transport import RequestError, RequestTimeout, Transport
from dlnet.protocol.wire import Kind, topic

REVEAL_DELAY: Final = 2.0
"""Reveals go out this long after the commit deadline (longer than ingest.COMMIT_GRACE), so
every validator has closed the commit window on its own clock before an embedding is public."""
PUSH_SETTLE: Final = 2.0
"""Validators start fetching what pushes did not bring them this long after pushes begin
(the reveal deadline is 4 s later by default). At 1 s, with the 2 cores busy with the pushes
of 100 encoders, repairs raced the keepers' forwards: a validator took ~400 reveals a round
twice, once by fetch and once forwarded (docs/BENCHMARKS.md, scale ladder)."""
PUSH_TIMEOUT: Final = 5.0
"""Longest wait for one peer's acknowledgement (the reveal deadline may cut it shorter)."""
MAX_PUSH_ITEMS: Final = 256
"""Most embeddings in one push; an encoder's round (shards x slots) is far below it."""
MAX_PUSH_BYTES: Final = 2 * 1024 * 1024
"""A push body above this is refused from its frame header, before it is read."""
MAX_DIRECT: Final = 16
"""Most keepers a push may name as pushed to directly (see `Push.forward`)."""
MAX_PEER_ID_CHARS: Final = 128
"""Longest peer id a push may name (base58 libp2p ids are ~52 characters)."""
HEADER_ROOM: Final = 4096
"""Bytes of a push body kept for everything but its items (the framing and the named
keepers: MAX_DIRECT ids of MAX_PEER_ID_CHARS fit)."""
KEEPER_MAX_PEERS: Final = 64
"""Default connection bound of a node that keeps reveals (validator, relay): every encoder
keeps two of them as outlets for its pushes (node/host.py, thin topics), so they need room
for their share of the encoders, beyond the 4 peers an encoder keeps."""
RETRY: Final = 1.0
"""Seconds between two pushes of an encoder while no peer has acknowledged every reveal."""
FORWARD_WINDOW: Final = 0.25
"""A keeper gathers what encoders pushed it for this long, then forwards it in one push per
keeper: the encoders' pushes of a round all start at the same instant, so one window
carries most of them."""
PUSH_GATHER: Final = 0.1
"""A `PushGroup` gathers its identities' pushes this long (they reveal at the same instant)."""
FORWARD_TIMEOUT: Final = 2.0
"""Longest wait for a keeper's acknowledgement of a forward (a keeper that lets it time out
is noted stalled and skipped by the next windows)."""


def protocol_id(network_id: bytes) -> str:
    return f"/dlnet/{network_id.hex()[:16]}/reveal/2"


def _pack(obj: object) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def batches(items: Sequence[bytes]) -> list[list[bytes]]:
    """``items`` cut, in order, into pushes of at most MAX_PUSH_ITEMS items and
    MAX_PUSH_BYTES of msgpack body (`push_body`, whatever keepers it names)."""
    out: list[list[bytes]] = []
    size = 0
    for item in items:
        # msgpack frames an array of n <= 65535 items in <= 3 bytes and each bin in <= 5.
        cost = len(item) + 5
        if not out or len(out[-1]) >= MAX_PUSH_ITEMS or size + cost > MAX_PUSH_BYTES - HEADER_ROOM:
            out.append([])
            size = 0
        out[-1].append(item)
        size += cost
    return out


def parse_ack(data: bytes, n: int) -> list[bool] | None:
    """The per-item answer to a push of ``n`` items, or None if it is not n booleans."""
    held = unpack_bounded(data)
    if not isinstance(held, list) or len(held) != n or not all(type(h) is bool for h in held):
        return None
    return held


@dataclass(frozen=True)
class Push:
    """A reveal push as received."""

    items: list[bytes]
    """Encoded Embeddings, at most MAX_PUSH_ITEMS."""
    forward: frozenset[str] | None
    """None: keep the items, forward nothing (a keeper's forward, or an encoder's push to a
    keeper it did not pick to forward). Else: forward what was new to every connected keeper
    but the sender and these, the keepers the encoder pushed to itself."""


def push_body(items: list[bytes], forward: frozenset[str] | None) -> bytes:
    """The request body of a push: the msgpack array ``[items, forward]`` (``forward`` nil
    or an array of peer id strings, sorted)."""
    return _pack([items, None if forward is None else sorted(forward)])


def parse_push(data: bytes) -> Push | str:
    """A push body, or its reject reason (``malformed``, ``too_many``)."""
    obj = unpack_bounded(data)
    if not isinstance(obj, list) or len(obj) != 2:
        return "malformed"
    items, forward = obj
    if not isinstance(items, list) or not all(type(i) is bytes for i in items):
        return "malformed"
    if forward is not None and not (
        isinstance(forward, list)
        and len(forward) <= MAX_DIRECT
        and all(type(p) is str and len(p) <= MAX_PEER_ID_CHARS for p in forward)
    ):
        return "malformed"
    if len(items) > MAX_PUSH_ITEMS:
        return "too_many"
    return Push(items, None if forward is None else frozenset(forward))


def receive(ingest: Ingest, data: bytes) -> list[Outcome] | str:
    """The receiving side of one push: each item goes through full admission as an
    Embedding (a copy already held is acknowledged without being decoded again); the answer
    says, per item, whether this node now holds it. A body `parse_push` refuses returns its
    reject reason instead."""
    push = parse_push(data)
    return push if isinstance(push, str) else _admit(ingest, push.items)


def _admit(ingest: Ingest, items: list[bytes]) -> list[Outcome]:
    with ingest.store.batch():  # acknowledged only once stored: one commit for the push
        return [ingest.admit_pushed(item) for item in items]


class Forwarder:
    """One hop of keeper-to-keeper forwarding. The reveals a keeper newly admitted from a push
    that asks it to forward (`Push.forward`) are gathered for FORWARD_WINDOW and then pushed,
    as one push that asks for no forwarding, to every keeper it is connected to except the
    sender and the keepers the push named. An encoder asks one of the keepers it pushes to,
    so each reveal reaches each keeper about once; what still misses a keeper after that is
    fetched by commitment (node/sync.py)."""

    def __init__(self, host: Transport, ingest: Ingest) -> None:
        self.host = host
        self.ingest = ingest
        self.topic = topic(ingest.cfg.network_id, Kind.EMBEDDING)
        self._send, self._recv = trio.open_memory_channel[_Offer](math.inf)

    def offer(self, source: str, items: list[bytes], skip: frozenset[str]) -> None:
        """Forward ``items`` (just admitted from ``source``'s push, which named ``skip``)
        with the next window."""
        if items:
            self._send.send_nowait(_Offer(source, items, skip))

    async def run(self) -> None:
        """Forward, window after window, until cancelled."""
        async for first in self._recv:
            await trio.sleep(FORWARD_WINDOW)
            pending = [first]
            while True:
                try:
                    pending.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._forward(pending)

    async def _forward(self, pending: list[_Offer]) -> None:
        end = self.ingest.now() + FORWARD_TIMEOUT
        async with trio.open_nursery() as nursery:
            for peer in self.host.carriers(self.topic):
                items = [
                    item
                    for offer in pending
                    if peer != offer.source and peer not in offer.skip
                    for item in offer.items
                ]
                if items:
                    self.ingest.counters.add(C.PUSH, "forwarded", len(items))
                    nursery.start_soon(_push_one, self.host, self.ingest, peer, items, end, None)


@dataclass(frozen=True)
class _Offer:
    source: str
    items: list[bytes]
    skip: frozenset[str]


def install_server(
    host: Transport,
    ingest: Ingest,
    nursery: trio.Nursery | None = None,
    forwarder: Forwarder | None = None,
) -> None:
    """Accept reveal pushes. A malformed push is counted (``rejected:push_<reason>``),
    charged to the peer and answered with an empty array; each item rejected by admission
    costs the peer a penalty point, as in sync. An item that conflicts with a held reveal of
    the same slot (equivocation) is gossiped on the embedding topic, from ``nursery`` (else
    before the answer). Given a ``forwarder``, the new items of a push that asks for it go on
    to the other keepers (`Forwarder`)."""

    evidence_topic = topic(ingest.cfg.network_id, Kind.EMBEDDING)

    async def handler(data: bytes, peer: str) -> bytes:
        push = parse_push(data)
        if isinstance(push, str):
            ingest.count(C.REJECTED, f"push_{push}")
            host.penalize(peer, f"push_{push}")
            return _pack([])
        items = push.items
        outcome = _admit(ingest, items)
        for item, result in zip(items, outcome, strict=True):
            if result is Outcome.REJECTED:
                host.penalize(peer, "push_bad_item")
            elif result is Outcome.EQUIVOCATION:
                # A second signed reveal for a slot: the evidence goes to every keeper by
                # gossip, so that each excludes the equivocator (a push reaches only some);
                # published beside the answer, which gossip's pacing must not delay.
                if nursery is None:
                    await host.publish(evidence_topic, item)
                else:
                    nursery.start_soon(host.publish, evidence_topic, item)
        ingest.count(C.PUSH, "received")
        if forwarder is not None and push.forward is not None:
            fresh = [i for i, r in zip(items, outcome, strict=True) if r is Outcome.NEW]
            forwarder.offer(peer, fresh, push.forward)
        return _pack([result in (Outcome.NEW, Outcome.DUPLICATE) for result in outcome])

    host.set_request_handler(
        protocol_id(ingest.cfg.network_id), handler, max_request_bytes=MAX_PUSH_BYTES
    )


async def _push_one(
    host: Transport,
    ingest: Ingest,
    peer: str,
    items: list[bytes],
    end: float,
    forward: frozenset[str] | None,
) -> list[bool]:
    """Push ``items`` to ``peer`` (in as many requests as `batches` makes, each naming
    ``forward``); per item, whether it acknowledged holding it (False from the first batch
    that failed on)."""
    pid = protocol_id(ingest.cfg.network_id)
    held: list[bool] = []
    for batch in batches(items):
        timeout = min(PUSH_TIMEOUT, end - ingest.now())
        if timeout <= 0:
            break
        try:
            with trio.fail_after(timeout + 0.5):  # host.request has its own, this is a backstop
                answer = await host.request(peer, pid, push_body(batch, forward), timeout)
        except (RequestTimeout, trio.TooSlowError):  # the host noted the peer stalled
            ingest.count(C.PUSH, "peer_timeout")
            break
        except RequestError:  # no such protocol, a broken stream, an error frame
            ingest.count(C.PUSH, "request_failed")
            break
        acks = parse_ack(answer, len(batch))
        if acks is None:
            ingest.count(C.PUSH, "bad_ack")
            host.penalize(peer, "push_bad_ack")
            break
        if not all(acks):
            ingest.count(C.PUSH, "partly_held")
        held += acks
    return held + [False] * (len(items) - len(held))


async def _push_to_keepers(
    host: Transport, ingest: Ingest, parts: list[list[bytes]], deadline: float
) -> list[int]:
    """Push the items of every part (encoded Embeddings) to every connected peer that keeps
    reveals, as one push per keeper, all at once, each ask bounded by min(PUSH_TIMEOUT,
    ``deadline`` - now) (the node's clock). Per part: how many keepers acknowledged holding
    every item of it."""
    items = [item for part in parts for item in part]
    acked = [0] * len(parts)
    keepers = host.carriers(topic(ingest.cfg.network_id, Kind.EMBEDDING))[:MAX_DIRECT]
    # One keeper, at random, forwards to the keepers this push does not reach.
    forwarder = random.choice(keepers) if keepers else None
    direct = frozenset(keepers)

    async def one(peer: str) -> None:
        forward = direct if peer == forwarder else None
        held = await _push_one(host, ingest, peer, items, deadline, forward)
        lo = 0
        for i, part in enumerate(parts):
            acked[i] += all(held[lo : lo + len(part)])
            lo += len(part)

    async with trio.open_nursery() as nursery:
        for peer in keepers:
            nursery.start_soon(one, peer)
    return acked


class PushGroup:
    """The reveal pushes of the encoder identities of one process, sent together
    (`gather.Gathering`): the pushes asked within PUSH_GATHER of the first go to each keeper
    as one push (as many requests as `batches` makes) instead of one per identity. At 100
    encoders 24 to a process a keeper took 24 times fewer push requests, each a stream to
    open and a protocol to negotiate (docs/BENCHMARKS.md, scale ladder)."""

    def __init__(self, host: Transport, ingest: Ingest) -> None:
        self.host = host
        self.ingest = ingest
        self._gathering = Gathering(PUSH_GATHER, self._send, 0)

    async def push(self, items: list[bytes], deadline: float) -> int:
        """Push ``items`` with the other identities' pushes gathered with them (see
        `_push_to_keepers`); how many keepers acknowledged holding every one of ``items``."""
        return await self._gathering.ask((items, deadline))

    async def _send(self, asks: list[tuple[list[bytes], float]]) -> list[int]:
        """One push per keeper for every ask whose deadline has not passed."""
        acked = [0] * len(asks)
        live = [i for i, (_, deadline) in enumerate(asks) if deadline > self.ingest.now()]
        if live:
            counts = await _push_to_keepers(
                self.host, self.ingest, [asks[i][0] for i in live], min(asks[i][1] for i in live)
            )
            for i, n in zip(live, counts, strict=True):
                acked[i] = n
        return acked
