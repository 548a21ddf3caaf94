"""Pull repair and catch-up over a libp2p request/response protocol.

Gossip is best-effort, so every node also answers three requests from what it has stored,
and validators use them to fetch what they know they lack:

* ``["commitments", [hash, ...]]`` — reveals by the commitment hash listed in a Commit;
* ``["round", kind, round]`` — every stored message of one kind for one round;
* ``["certificates", first_round, last_round]`` — finalized certificates in a range.

The answer is a msgpack array of raw message bytes. The requester trusts nothing it fetches:
each answer goes through the same strict admission as a gossiped message, and each item must be
what was asked for (kind and round, commitment, round range), else it is rejected as
``unrequested`` and charged to the peer that sent it.

The client asks usable peers with a bounded number of asks in flight (FETCH_PARALLEL for
wanted items, ROUND_PARALLEL for a round's messages), asking the next peer as soon as an answer
leaves something wanted or HEDGE seconds pass without one; each ask is bounded by
min(REQUEST_TIMEOUT, the caller's deadline), and the search stops as soon as everything wanted
has arrived. A peer that timed out is skipped for STALL_SKIP seconds (unless every peer is;
`Host.note_stalled`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgpack
import trio

from dlnet.node import counters as C
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.transport import RequestTimeout, Transport
from dlnet.protocol.canonical import MAX_DEPTH, nesting_depth
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.round import Verified
from dlnet.protocol.rounds import round_at, round_times
from dlnet.protocol.wire import MAX_ROUND, Kind, Message, Reject, decode, topic

MAX_ITEMS = 256
MAX_REQUEST_BYTES = 64 * 1024
"""A sync request body above this is refused from its frame header, before it is read."""
# An answer carries at most this many bytes of messages, well inside the transport's 4 MiB
# frame: a larger answer would be refused whole. A requester asks again for what it still lacks.
MAX_ANSWER_BYTES = 3 * 1024 * 1024
REQUEST_TIMEOUT = 5.0
HEDGE = 1.0
"""Seconds without an answer after which the next peer is asked as well."""
FETCH_PARALLEL = 2
"""Asks in flight for wanted items (reveals by commitment, certificates)."""
STALE_ASK = 2.0
"""Seconds after which an ask still unanswered stops counting against the asks in flight."""
ROUND_PARALLEL = 4
"""Asks in flight when every peer is asked for a round's messages."""
RETRY_EVERY = 0.5
"""Seconds between two passes of `SyncClient.fetch_round_until` while its message is missing."""
HAVE_PREFIX = 16
"""Bytes of a message id that name a held message in a ``round`` request's ``have`` list: 16
bytes leave a colliding pair of one signer's own messages (an equivocation that would hide
from pulls) at 2^64 work."""
MAX_HAVE = 2048
"""Most ``have`` prefixes in one request (2048 x 18 bytes of msgpack, well inside
MAX_REQUEST_BYTES); a requester holding more names the first MAX_HAVE it stored and takes the
rest again as duplicates."""
ROUND_KINDS = (
    Kind.COMMIT,
    Kind.EMBEDDING,
    Kind.ATTESTATION,
    Kind.VOTE,
    Kind.SUBMISSION,
    Kind.SCHEDULE,
    Kind.PROBE,
    Kind.PROBE_KEY,
)
"""Kinds a ``round`` request may name: every gossiped kind (a certificate is fetched by
round range)."""


class BadRequest(ValueError):
    """A malformed sync request; ``str(e)`` is the reason (``oversize``, ``malformed``,
    ``unknown_op``)."""


def protocol_id(network_id: bytes) -> str:
    return f"/dlnet/{network_id.hex()[:16]}/sync/1"


def unpack_bounded(data: bytes) -> Any:
    """One msgpack value nested at most MAX_DEPTH deep; None for anything else."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
    except Exception:  # msgpack raises several unrelated types on garbage
        return None
    return obj if nesting_depth(obj) <= MAX_DEPTH else None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("no extension types")


def _parse_request(data: bytes) -> tuple[str, list[Any]]:
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest("oversize")
    req = unpack_bounded(data)
    if not isinstance(req, list) or not req or not isinstance(req[0], str):
        raise BadRequest("malformed")
    return req[0], req[1:]


def _ints(args: Sequence[Any], n: int) -> list[int]:
    if len(args) != n or not all(type(a) is int and 0 <= a <= MAX_ROUND for a in args):
        raise BadRequest("malformed")
    return list(args)


def answer(store: Store, cfg: NetworkConfig, now: float, data: bytes) -> bytes:
    """The sync server: lookups in the store; raises BadRequest (only) on any bad request.

    Reveals of a round are served only once its commit deadline has passed: an encoder
    holds its own reveals from the start of the round, and serving them early would let a
    copier commit to someone else's embeddings.
    """
    op, args = _parse_request(data)
    open_rounds = range(round_at(cfg, now) + 1)  # empty before genesis
    if open_rounds and now < round_times(cfg, open_rounds.stop - 1).commit_deadline:
        open_rounds = range(open_rounds.stop - 1)
    items: list[bytes]
    if op == "commitments":
        if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > MAX_ITEMS:
            raise BadRequest("malformed")
        hashes = args[0]
        if not all(isinstance(h, bytes) and len(h) == 32 for h in hashes):
            raise BadRequest("malformed")
        found = (store.get_by_commitment(h, rounds=open_rounds) for h in hashes)
        items = [d for d in found if d is not None]
    elif op == "round":
        have = _have(args[2:])
        kind, rnd = _ints(args[:2], 2)
        if kind not in ROUND_KINDS:
            raise BadRequest("malformed")
        rows = [] if kind == Kind.EMBEDDING and rnd not in open_rounds else store.rows(kind, rnd)
        items = [data for mid, data in rows if mid[:HAVE_PREFIX] not in have]
    elif op == "certificates":
        lo, hi = _ints(args, 2)
        if hi < lo or hi - lo >= MAX_ITEMS:
            raise BadRequest("malformed")
        items = [d for _, d in store.certificates(lo, hi)]
    else:
        raise BadRequest("unknown_op")
    return bytes(msgpack.packb(_bounded(items), use_bin_type=True))


def _have(args: Sequence[Any]) -> frozenset[bytes]:
    """A ``round`` request's optional ``have``: message-id prefixes the requester holds."""
    if not args:
        return frozenset()
    if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > MAX_HAVE:
        raise BadRequest("malformed")
    if not all(isinstance(p, bytes) and len(p) == HAVE_PREFIX for p in args[0]):
        raise BadRequest("malformed")
    return frozenset(args[0])


def _bounded(items: list[bytes]) -> list[bytes]:
    """The longest prefix of ``items`` that fits in MAX_ANSWER_BYTES."""
    total = 0
    for i, item in enumerate(items):
        total += len(item)
        if total > MAX_ANSWER_BYTES:
            return items[:i]
    return items


def parse_items(data: bytes) -> list[bytes] | None:
    """The items of a sync answer, or None if it is not an array of byte strings."""
    items = unpack_bounded(data)
    if not isinstance(items, list) or not all(type(i) is bytes for i in items):
        return None
    return items


class SyncClient:
    """Asks connected peers in parallel until what is wanted has arrived or the deadline."""

    def __init__(self, host: Transport, ingest: Ingest, network_id: bytes) -> None:
        self.host = host
        self.ingest = ingest
        self.pid = protocol_id(network_id)
        self._reveal_topic = topic(network_id, Kind.EMBEDDING)

    def _peers(self, keepers_only: bool = False, joined: str | None = None) -> list[str]:
        """Usable connected peers in random order, the ones that keep every reveal first
        (they join the embedding topic: validators, relays); an encoder holds its own only.
        ``keepers_only``: just those, if any is usable. ``joined`` (a topic): the other peers
        that joined it are left out: they hold what its gossip brought them, as the keepers
        do; a peer outside it (an encoder in the commit topic, a client) may hold the only
        copy of its own message."""
        peers = list(self.host.connected_peers())
        fresh = [p for p in peers if not self.host.stalled(p)]
        peers = fresh or peers  # if every peer stalled, trying them beats giving up
        random.shuffle(peers)
        keepers = set(self.host.carriers(self._reveal_topic))
        first = [p for p in peers if p in keepers]
        if keepers_only and first:
            return first
        rest = [p for p in peers if p not in keepers]
        if joined is not None:
            inside = set(self.host.carriers(joined))
            rest = [p for p in rest if p not in inside]
        return first + rest

    async def _ask(self, peer: str, request: list[Any], deadline: float) -> list[bytes]:
        timeout = min(REQUEST_TIMEOUT, deadline - self.ingest.now())
        if timeout <= 0:
            self.ingest.count(C.SYNC, "deadline_passed")
            return []
        payload = bytes(msgpack.packb(request, use_bin_type=True))
        try:
            with trio.fail_after(timeout + 0.5):  # host.request has its own, this is a backstop
                data = await self.host.request(peer, self.pid, payload, timeout)
        except (RequestTimeout, trio.TooSlowError):  # the host noted the peer stalled
            self.ingest.count(C.SYNC, "peer_timeout")
            return []
        except Exception:  # a peer's broken stream or error frame must not take the node down
            self.ingest.count(C.SYNC, "request_failed")
            return []
        items = parse_items(data)
        if items is None:
            self.ingest.count(C.REJECTED, "sync_bad_answer")
            self.host.penalize(peer, "sync_bad_answer")
            return []
        return items

    async def _gather(
        self,
        request: Callable[[], list[Any] | None],
        handle: Callable[[str, list[bytes]], Awaitable[None]],
        deadline: float,
        *,
        parallel: int,
        hedge: float,
        peers: Sequence[str] | None = None,
    ) -> None:
        """Ask usable peers ``request()`` (None: nothing left to ask) and pass each answer to
        ``handle``, at most ``parallel`` asks in flight; the next peer is asked when an answer
        came back and something is still wanted, or when ``hedge`` seconds passed without one
        (a stalled peer delays the search by ``hedge``, not by a whole timeout). Returns once
        every peer (``peers``, else all of `_peers`) was asked and answered, or ``request()``
        says nothing is left, or the deadline passed.

        Asking every peer at once for the same missing reveals made each answer travel once
        per peer: the duplicate megabytes clogged a 13-encoder testnet (docs/RELIABILITY.md)."""
        if request() is None:
            return
        finished_send, finished = trio.open_memory_channel[None](math.inf)
        started: dict[str, float] = {}  # peer -> trio time its ask in flight started
        async with trio.open_nursery() as nursery:

            async def one(peer: str, wanted: list[Any]) -> None:
                try:
                    await handle(peer, await self._ask(peer, wanted, deadline))
                finally:
                    del started[peer]
                    finished_send.send_nowait(None)
                if request() is None:
                    nursery.cancel_scope.cancel()

            for peer in self._peers() if peers is None else peers:
                # An ask unanswered for STALE_ASK no longer holds one of the `parallel`
                # places: two stopped peers asked first blocked a repair for its whole window.
                while len(fresh := self._fresh(started)) >= parallel:
                    with trio.move_on_after(min(fresh) + STALE_ASK - trio.current_time()):
                        await finished.receive()
                wanted = request()
                if wanted is None or self.ingest.now() >= deadline:
                    break
                started[peer] = trio.current_time()
                nursery.start_soon(one, peer, wanted)
                with trio.move_on_after(max(0.0, min(hedge, deadline - self.ingest.now()))):
                    await finished.receive()

    @staticmethod
    def _fresh(started: dict[str, float]) -> list[float]:
        """Start times of the asks in flight for less than STALE_ASK seconds."""
        now = trio.current_time()
        return [t for t in started.values() if now - t < STALE_ASK]

    async def _admit(
        self,
        peer: str,
        items: list[bytes],
        kind: Kind,
        requested: Callable[[Verified[Message]], bool],
    ) -> int:
        """Admit each item once (decode, verify, store) as what ``requested`` expects. The
        items are verified first (a commit's registration proof off the event loop), then
        stored in one transaction."""
        checked = [await self.ingest.verify_fetched(data, kind) for data in items]
        got = 0
        with self.ingest.store.batch():  # one commit per answer, not per message
            for item in checked:
                outcome = (
                    item
                    if isinstance(item, Outcome)
                    else self.ingest.admit_verified(item, requested)
                )
                if outcome is Outcome.REJECTED:
                    self.host.penalize(peer, "sync_bad_item")
                got += outcome is Outcome.NEW
        return got

    async def fetch_commitments(self, wanted: Iterable[bytes], *, deadline: float) -> int:
        """Fetch reveals by commitment hash until all arrived or ``deadline`` (the node's clock);
        returns how many new ones were admitted."""
        missing = set(wanted)
        asked = frozenset(missing)
        got = 0

        def request() -> list[Any] | None:
            return ["commitments", sorted(missing)[:MAX_ITEMS]] if missing else None

        def requested(v: Verified[Message]) -> bool:
            # The commitment was computed once, at admission.
            if v.commitment is None or v.commitment not in asked:
                return False
            missing.discard(v.commitment)  # a valid, signed reveal: admitted next
            return True

        async def handle(peer: str, items: list[bytes]) -> None:
            nonlocal got
            got += await self._admit(peer, items, Kind.EMBEDDING, requested)

        await self._gather(request, handle, deadline, parallel=FETCH_PARALLEL, hedge=HEDGE)
        return got

    async def fetch_round(
        self,
        kind: Kind,
        rnd: int,
        *,
        deadline: float,
        everyone: bool = False,
        most: int | None = None,
    ) -> int:
        """Fetch every message of a kind for a round from the usable peers that keep reveals
        (validators and relays hold every gossiped message of a round; an encoder holds its
        own), in parallel, until ``deadline`` (the node's clock); returns new admissions.
        ``everyone``: also every usable peer outside the kind's topic (`_peers`); with no
        keeper connected, every usable peer. ``most``: at most that many peers, keepers first,
        at random."""
        got = 0

        def requested(v: Verified[Message]) -> bool:
            return v.msg.round == rnd

        async def handle(peer: str, items: list[bytes]) -> None:
            nonlocal got
            got += await self._admit(peer, items, kind, requested)

        def request() -> list[Any]:
            held = self.ingest.store.ids(kind, rnd)[:MAX_HAVE]
            return ["round", int(kind), rnd, [mid[:HAVE_PREFIX] for mid in held]]

        await self._gather(
            request,
            handle,
            deadline,
            parallel=ROUND_PARALLEL,
            hedge=0.0,
            peers=self._peers(
                keepers_only=not everyone,
                joined=topic(self.ingest.cfg.network_id, kind) if everyone else None,
            )[:most],
        )
        return got

    async def fetch_round_until(
        self, kind: Kind, rnd: int, done: Callable[[], bool], *, deadline: float
    ) -> None:
        """`fetch_round` again every RETRY_EVERY seconds until ``done()`` or ``deadline``: one
        pass asks each peer once, and peers that do not hold a message yet answer empty (a
        publisher cut off when it published reaches them only later, by their own pulls)."""
        while not done() and self.ingest.now() < deadline:
            await self.fetch_round(kind, rnd, deadline=deadline)
            if not done():
                await trio.sleep(max(0.0, min(RETRY_EVERY, deadline - self.ingest.now())))

    async def fetch_certificates(
        self, lo: int, hi: int, keep: Callable[[bytes], bool], *, deadline: float
    ) -> int:
        """Certificates for rounds lo..hi: asked of every usable peer in parallel, stopping at
        the first answer of which ``keep`` (the caller's verification) takes any; a certificate
        outside [lo, hi] is rejected as unrequested. Returns how many were kept."""
        kept = 0

        def request() -> list[Any] | None:
            return None if kept else ["certificates", lo, hi]

        async def handle(peer: str, items: list[bytes]) -> None:
            nonlocal kept
            for data in items:
                try:
                    cert = decode(data, self.ingest.cfg, Kind.CERTIFICATE)
                except Reject as exc:
                    self.ingest.count(C.REJECTED, exc.reason.value)
                    self.host.penalize(peer, "sync_bad_item")
                    continue
                if not lo <= cert.round <= hi:
                    self.ingest.count(C.REJECTED, "unrequested")
                    self.host.penalize(peer, "sync_bad_item")
                    continue
                kept += keep(data)

        await self._gather(request, handle, deadline, parallel=FETCH_PARALLEL, hedge=HEDGE)
        return kept


def install_server(host: Transport, store: Store, ingest: Ingest, now: Callable[[], float]) -> None:
    """Serve sync requests: a bad one is counted (``rejected:sync_<reason>``), charged to the
    peer and answered with an empty array."""

    async def handler(data: bytes, peer: str) -> bytes:
        try:
            return answer(store, ingest.cfg, now(), data)
        except BadRequest as exc:
            ingest.count(C.REJECTED, f"sync_{exc}")
            host.penalize(peer, f"sync_{exc}")
            return bytes(msgpack.packb([], use_bin_type=True))

    host.set_request_handler(
        protocol_id(ingest.cfg.network_id), handler, max_request_bytes=MAX_REQUEST_BYTES
    )
