"""Generic libp2p transport for dlnet: gossipsub topics and framed request/response streams
(`dlnet.node.transport.Transport` over py-libp2p; frames in node/framing.py, per-peer
penalties in node/penalties.py, every override of py-libp2p internals in
node/libp2p_compat.py).

It knows bytes, topics and peers, never dlnet message semantics. Every known pitfall of
py-libp2p 0.8.1 is handled deliberately (each pitfall below was measured):

* spam protection counts messages per *forwarder* and topic, so a relay of many
  publishers trips it: it is off by default (``spam_limit=None``) and publishing is paced
  per topic by a token bucket (node/pacing.py) that must stay below the limit whenever it is on;
* eclipse protection wants three distinct IPs in a mesh, impossible on a 127.0.0.1
  testnet: off;
* a subscription queue holds 32 messages and drops silently: accepted messages go
  straight into an unbounded trio channel drained by one task per topic;
* the per-peer outbound queue holds 32 RPCs and drops silently: ``publish`` waits until
  every outbound queue is at most half full and counts any drop the library still makes;
* ``new_host(bootstrap=...)`` gives a star: peer exchange (``node/discovery.py``) builds
  a mesh with each node's degree bounded by ``max_peers``;
* restarting with the same libp2p key met stale state at the peers (0/20 delivered): seqnos
  started at ``int(time.time())`` so a quick restart reused them, and every peer's
  (origin, seqno) equivocation check dropped the new messages. Seqnos start at
  ``time.time_ns()`` and the router forgets a peer's (origin, seqno) entries when it
  connects or disconnects; a node keeps its key in ``<data-dir>/peer.key``;
* the message cache replays recent messages to a newcomer: passed through as is, the
  application drops rounds outside its window;
* ``publish`` would run our own topic validator on our own message: local publishes skip
  the validator and are not handed back to our own handler.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import OutBoundQueueSize
from libp2p.tools.anyio_service import background_trio_service

from dlnet.node import counters as C
from dlnet.node.counters import Counters
from dlnet.node.discovery import PeerExchange, PeerTable, decode_px, encode_px
from dlnet.node.framing import (
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_REQUEST,
    FRAME_RESPONSE,
    MAX_ERROR_BYTES,
    encode_frame,
    read_frame,
)
from dlnet.node.libp2p_compat import (
    CountingGossipSub,
    DeliveringPubsub,
    batch_window_updates,
    connection_config,
    content_id,
    gossip_stream_closed,
    keep_new_connections_on_close,
    start_seqnos_fresh,
)
from dlnet.node.logs import adopt_libp2p_logging
from dlnet.node.pacing import TopicPacer
from dlnet.node.penalties import PeerPenalties
from dlnet.node.transport import (
    STALL_SKIP,
    AsyncValidator,
    GossipParams,
    MessageHandler,
    RequestError,
    RequestHandler,
    RequestTimeout,
    Validator,
    ValidatorResult,
    Verdict,
)

log = logging.getLogger(__name__)

GOSSIP_PROTOCOL = TProtocol("/meshsub/1.1.0")
STATUS_PROTOCOL = "/dlnet/status/1"
"""Network-id-free status exchange on every new connection (PROTOCOL.md §6)."""
MAX_STATUS_BYTES = 64
STATUS_LINGER = 1.0
WRONG_NETWORK_BACK_OFF = 600.0
RECONNECT_MAX = 60.0
"""Longest pause between two attempts to reach any seed peer while none is connected,
and cap of the per-peer exponential dial back-off."""
SAVED_PEERS_MAX = 64
OUTLET_REDIAL = 5.0
"""Seconds between two rounds of seed dials while a topic of this node has no carrier."""
STUCK_AFTER = 1.0
"""Seconds after which a cancelled request still running counts as stuck (see request)."""
STALL_AFTER = 2.0
"""A request unanswered this long, when it was given at least that long, notes its peer
stalled: a live peer answers a sync ask or takes a reveal push in well under that."""
WEDGE_GRACE = 5.0
"""Seconds an abandoned request may take to end before the peer's connection is severed."""
# The event-loop watch (`Host._watch_loop`): wake every LOOP_TICK s, count a wake-up more
# than LOOP_STALL s late as a stall (a stall of S seconds makes a wake-up S - LOOP_TICK to S
# late). Every 0.1 s, the watch was most of an idle node's CPU: 0.36 % of a core for a lone
# host against 0.14 % every 0.5 s, and 13 processes at 100 x 7 idle most of a round
# (docs/BENCHMARKS.md, scale ladder).
LOOP_TICK = 0.5
LOOP_STALL = 1.0


# Diagnostics: with DLNET_SLOW_STEPS=SECONDS in the environment, every task step (the code a
# task runs between two awaits) longer than that is logged with its task, wall and CPU time.
SLOW_STEPS_ENV = "DLNET_SLOW_STEPS"


class _SlowSteps(trio.abc.Instrument):
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._began = (time.perf_counter(), time.thread_time())

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = (time.perf_counter(), time.thread_time())

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        wall = time.perf_counter() - self._began[0]
        if wall > self.threshold:
            cpu = time.thread_time() - self._began[1]
            log.warning("slow task step: %s, %.2f s wall, %.2f s CPU", task.name, wall, cpu)


class Host:
    """A running libp2p node; obtain one with :func:`open_host`."""

    def __init__(
        self,
        lp: IHost,
        pubsub: DeliveringPubsub,
        router: CountingGossipSub,
        params: GossipParams,
        counters: Counters,
        nursery: trio.Nursery,
        px_protocol: str,
        network_id: bytes = b"",
    ) -> None:
        self._lp = lp
        self._pubsub = pubsub
        self._router = router
        self._params = params
        self._counters = counters
        self._nursery = nursery
        self._px_protocol = px_protocol
        self._rng = random.Random(os.urandom(16))
        self._pacer = TopicPacer(params.publish_rate, params.publish_burst)
        self._sinks: dict[str, trio.MemorySendChannel[tuple[bytes, str]]] = {}
        self.penalties = PeerPenalties(params)
        self.peer_id: str = lp.get_id().to_base58()
        # As others dial them (and as peer exchange sends them): ending in /p2p/<peer id>.
        self.addrs: list[str] = [
            a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}" for a in map(str, lp.get_addrs())
        ]
        self._table = PeerTable(self.peer_id)
        self._network_id = network_id
        self._status_ok: set[str] = set()
        self._dial_failures: dict[str, int] = {}
        self._outlets: set[str] = set()
        self._wedged: dict[str, int] = {}
        """Peers with a request whose caller gave up and whose stream work is stuck."""
        self._stalled_until: dict[str, float] = {}  # peer -> trio time until it counts as stalled
        self._queue_over_since: dict[ID, float] = {}
        """Since when each peer's outbound gossip queue is over half full (trio clock)."""
        """Topics this node publishes into without joining them (see ``publish_outside``)."""
        self.on_wrong_network: Callable[[str, bytes], None] | None = None
        """Called with (peer id, its network id) when a peer of another network is refused."""
        pubsub.deliver = self._deliver

    @property
    def counters(self) -> Mapping[str, int]:
        """Live read-only counters: published, delivered, accepted, rejected[.reason],
        ignored[.reason], dropped[.reason] (must stay 0), px.*, requests.*, evicted, banned
        (declared in node/counters.py; with the node's ingest also signature_verifies.<kind>)."""
        return MappingProxyType(self._counters.values)

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self._lp.get_connected_peers())

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic`` (pubsub may list a peer whose
        connection just closed until it notices)."""
        connected = set(self._lp.get_connected_peers())
        return sorted(
            p.to_base58() for p in self._pubsub.peer_topics.get(topic, ()) if p in connected
        )

    def carriers(self, topic: str) -> list[str]:
        """Connected peers subscribed to ``topic`` that are neither stuck (their outbound
        queue stays full: they read nothing, see ``_stuck_peers``) nor stalled (they let a
        request time out, `note_stalled`): a peer that does not answer is no outlet."""
        stuck = {p.to_base58() for p in self._stuck_peers()}
        return [p for p in self.topic_peers(topic) if p not in stuck and not self.stalled(p)]

    def note_stalled(self, peer: str) -> None:
        """``peer`` let a request time out: for STALL_SKIP seconds sync leaves it out and it
        is no carrier of any topic, so peer upkeep dials another one if a topic runs thin (two
        of four validators stopped kept their encoders' reveals from the live ones)."""
        self._stalled_until[peer] = trio.current_time() + STALL_SKIP
        self._counters.add(C.PEERS_STALLED)

    def stalled(self, peer: str) -> bool:
        return self._stalled_until.get(peer, -math.inf) > trio.current_time()

    def mesh_peers(self, topic: str) -> list[str]:
        """Peers in our gossipsub mesh for ``topic`` (full messages go to these)."""
        return sorted(p.to_base58() for p in self._router.mesh.get(topic, ()))

    # ----- gossip ---------------------------------------------------------------------

    async def subscribe(
        self,
        topic: str,
        validator: Validator,
        handler: MessageHandler,
        *,
        slow: AsyncValidator | None = None,
    ) -> None:
        """Join ``topic``: ``validator`` runs before relaying; accepted messages from other
        peers reach ``handler(data, forwarding peer id)`` one at a time, in arrival order.
        With ``slow``, that one is awaited instead (``validator`` unused): py-libp2p runs it
        in the message's own task, so other messages are relayed meanwhile."""
        if topic in self._sinks:
            raise ValueError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[tuple[bytes, str]](math.inf)
        self._sinks[topic] = send
        if slow is None:
            self._pubsub.set_topic_validator(
                topic, lambda fwd, msg: self._validate(topic, validator, fwd, msg), False
            )
        else:
            self._pubsub.set_topic_validator(
                topic, lambda fwd, msg: self._validate_async(topic, slow, fwd, msg), True
            )
        self._nursery.start_soon(self._dispatch, recv, handler)
        await self._pubsub.subscribe(topic)

    def publish_outside(self, topic: str) -> None:
        """Declare that this node publishes into ``topic`` without joining it: gossipsub then
        sends each message to up to D connected peers that joined it (fanout). Peer upkeep
        treats it like a joined topic: eviction leaves it D_low carriers, and while none
        is connected the seed peers are dialled again (``px.outlet_dials``) — a relay joins
        every topic."""
        self._outlets.add(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data``: paced per topic (`TopicPacer`), in call order, and only once every
        outbound peer queue has room (a queue stuck past ``backpressure_timeout`` is
        sent to anyway and any resulting drop is counted). Into a topic it publishes outside,
        it first waits up to ``backpressure_timeout`` for a connected peer that joined it;
        with none, the message reaches nobody by gossip (``publish.no_peers``: it is stored,
        and validators fetch it by pull repair)."""
        if len(data) > self._params.max_message_bytes:
            raise ValueError(f"message of {len(data)} bytes exceeds max_message_bytes")
        async with self._pacer.turn(topic):
            await self._wait_outbound_room()
            if topic in self._outlets and not await self._wait_topic_peer(topic):
                self._counters.add(C.PUBLISH_NO_PEERS)
            await self._pubsub.publish(topic, data)
            self._counters.add(C.PUBLISHED)

    async def _wait_topic_peer(self, topic: str) -> bool:
        deadline = trio.current_time() + self._params.backpressure_timeout
        while not self.topic_peers(topic):
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(0.05)
        return True

    async def _wait_outbound_room(self) -> None:
        """Wait until every outbound queue is at most half full, or is stuck (see
        ``_stuck_peers``): one stopped peer delays one publish, not every publish (a
        SIGSTOPped validator held every attestation of the others 5 s back and cost rounds)."""
        before = self._stuck_peers()
        while not self._over_half() <= (stuck := self._stuck_peers()):
            await trio.sleep(0.005)  # bounded: a queue over half is stuck after the timeout
        if stuck - before:
            self._counters.add(C.PUBLISH_BACKPRESSURE_TIMEOUT)

    def _over_half(self) -> set[ID]:
        half = OutBoundQueueSize // 2
        return {peer for peer, queue in self._pubsub.peer_queues.items() if len(queue) > half}

    def _stuck_peers(self) -> set[ID]:
        """Peers whose outbound gossip queue has stayed over half full for a whole
        ``backpressure_timeout``: they read nothing (stopped, or wedged). Publishing stops
        waiting for them, and peer upkeep neither counts them as a topic's carriers nor
        keeps them from eviction."""
        now = trio.current_time()
        over = self._over_half()
        since = self._queue_over_since
        for peer in set(since) - over:
            del since[peer]
        for peer in over:
            since.setdefault(peer, now)
        return {p for p in over if now - since[p] >= self._params.backpressure_timeout}

    def _validate(self, topic: str, validator: Validator, fwd: ID, msg: rpc_pb2.Message) -> bool:
        peer = fwd.to_base58()
        if len(msg.data) > self._params.max_message_bytes:
            return self._verdict(peer, (Verdict.REJECT, "oversize"))
        try:
            result = validator(topic, msg.data, peer)
        except Exception:
            log.exception("topic validator for %s raised", topic)
            result = (Verdict.REJECT, "validator_error")
        return self._verdict(peer, result)

    async def _validate_async(
        self, topic: str, validator: AsyncValidator, fwd: ID, msg: rpc_pb2.Message
    ) -> bool:
        peer = fwd.to_base58()
        if len(msg.data) > self._params.max_message_bytes:
            return self._verdict(peer, (Verdict.REJECT, "oversize"))
        try:
            result = await validator(topic, msg.data, peer)
        except Exception:
            log.exception("topic validator for %s raised", topic)
            result = (Verdict.REJECT, "validator_error")
        return self._verdict(peer, result)

    def _verdict(self, peer: str, result: ValidatorResult) -> bool:
        """Count a topic validator's verdict, charge ``peer`` for anything not accepted;
        whether to relay and deliver."""
        verdict, reason = (result, "validator") if isinstance(result, Verdict) else result
        if verdict is Verdict.ACCEPT:
            self._counters.add(C.GOSSIP_ACCEPTED)
            return True
        kind = C.GOSSIP_REJECTED if verdict is Verdict.REJECT else C.GOSSIP_IGNORED
        self._counters.add(kind, reason)
        if verdict is Verdict.REJECT:
            self.penalize(peer, reason)
        else:  # duplicates, old or future rounds: cheap each, a flood of them bans
            self.penalize(peer, f"ignored_{reason}", self._params.ignore_penalty)
        return False

    async def _watch_loop(self) -> None:
        slow = os.environ.get(SLOW_STEPS_ENV)
        if slow:
            trio.lowlevel.add_instrument(_SlowSteps(float(slow)))
        await self._watch_lag()

    async def _watch_lag(self) -> None:
        """Measure how long the event loop goes without running this task: one blocking
        call (a scrypt, a decode, a long batch of tasks) holds up every stream of the node.
        Each wake-up over LOOP_STALL seconds late is counted (``loop.stalls``, the lateness
        summed in ``loop.stalled_ms``, the worst in ``loop.max_stall_ms``) and logged."""
        while True:
            before = trio.current_time()
            await trio.sleep(LOOP_TICK)
            late = trio.current_time() - before - LOOP_TICK
            if late > LOOP_STALL:
                ms = round(late * 1000)
                self._counters.add(C.LOOP_STALLS)
                self._counters.add(C.LOOP_STALLED_MS, n=ms)
                self._counters.peak(C.LOOP_MAX_STALL_MS, ms)
                log.warning("event loop blocked for %.1f s", late)

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        """Charge ``peer`` for misbehaviour (counted as ``penalty.<reason>``); at
        ``reject_ban_threshold`` points it is disconnected and banned for ``ban_seconds``."""
        self._counters.add(C.PENALTY, reason)
        if self.penalties.penalize(peer, reason, points, trio.current_time()):
            self._counters.add(C.BANNED)  # here, not in `_ban`: the ban holds from this moment
            self._nursery.start_soon(self._ban, ID.from_base58(peer))

    def is_banned(self, peer: str) -> bool:
        return self.penalties.banned(peer, trio.current_time())

    def _deliver(self, topic: str, data: bytes, forwarder: ID) -> None:
        sink = self._sinks.get(topic)
        if sink is not None:
            sink.send_nowait((data, forwarder.to_base58()))  # unbounded: never blocks

    async def _dispatch(
        self, recv: trio.MemoryReceiveChannel[tuple[bytes, str]], handler: MessageHandler
    ) -> None:
        async for data, peer in recv:
            self._counters.add(C.DELIVERED)
            try:
                await handler(data, peer)
            except Exception:
                log.exception("message handler failed")
                self._counters.add(C.HANDLER_ERRORS)

    async def _ban(self, peer: ID) -> None:
        self._table.back_off(peer.to_base58(), trio.current_time() + self._params.ban_seconds)
        self._pubsub.add_to_blacklist(peer)
        with contextlib.suppress(Exception):
            await self._lp.disconnect(peer)
        await trio.sleep(self._params.ban_seconds)
        self._pubsub.remove_from_blacklist(peer)

    # ----- request / response ---------------------------------------------------------

    def set_request_handler(
        self, protocol_id: str, handler: RequestHandler, *, max_request_bytes: int | None = None
    ) -> None:
        """Serve ``protocol_id``: one request frame in, one response or error frame out.
        A handler raising :class:`RequestError` sends its message; anything else sends
        ``internal error``. A request body above ``max_request_bytes`` (default
        ``max_frame_bytes``) is refused from its frame header, before it is read. A banned
        peer's streams are reset unread; a peer over its request rate (``request_rate``,
        ``request_burst``) gets a ``rate limited`` error frame and a penalty point."""
        limit = self._params.max_frame_bytes if max_request_bytes is None else max_request_bytes

        async def serve(stream: INetStream) -> None:
            await self._serve(stream, handler, limit)

        self._lp.set_stream_handler(TProtocol(protocol_id), serve)

    async def _serve(self, stream: INetStream, handler: RequestHandler, limit: int) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        max_bytes = self._params.max_frame_bytes
        if self.is_banned(peer):
            self._counters.add(C.REQUESTS_REFUSED_BANNED)
            with contextlib.suppress(Exception):
                await stream.reset()
            with contextlib.suppress(Exception):
                await self._lp.disconnect(ID.from_base58(peer))
            return
        if not self.penalties.allow_request(peer, trio.current_time()):
            self._counters.add(C.REQUESTS_RATE_LIMITED)
            self.penalize(peer, "rate_limited")
            with contextlib.suppress(Exception):
                with trio.move_on_after(1.0):
                    await stream.write(encode_frame(FRAME_ERROR, b"rate limited"))
                await stream.close()
            return
        try:
            with trio.fail_after(self._params.request_timeout):
                try:
                    kind, body = await read_frame(stream, limit)
                except RequestError:
                    self.penalize(peer, "bad_request_frame")
                    raise
                if kind != FRAME_REQUEST:
                    raise RequestError(f"expected a request frame, got kind {kind}")
                try:
                    answer = encode_frame(FRAME_RESPONSE, await handler(body, peer))
                    if len(answer) - FRAME_HEADER.size > max_bytes:
                        raise RequestError("response exceeds max_frame_bytes")
                except RequestError as exc:
                    answer = encode_frame(FRAME_ERROR, str(exc).encode()[:MAX_ERROR_BYTES])
                    self._counters.add(C.REQUESTS_ANSWERED_ERROR)
                except Exception:
                    log.exception("request handler failed")
                    answer = encode_frame(FRAME_ERROR, b"internal error")
                    self._counters.add(C.REQUESTS_ANSWERED_ERROR)
                await stream.write(answer)
            self._counters.add(C.REQUESTS_SERVED)
            await stream.close()
        except Exception as exc:  # bad frame, timeout, reset: drop this stream only
            log.debug("inbound request from %s failed: %r", peer, exc)
            self._counters.add(C.REQUESTS_BAD_INBOUND)
            with contextlib.suppress(Exception):
                await stream.reset()

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float) -> bytes:
        """Send one request to a connected (or dialable) peer and return the response body.

        Raises :class:`RequestTimeout` after ``timeout`` seconds, :class:`RequestError` on an
        error frame, an oversized or malformed frame, or any transport failure.

        The stream work runs in the host's nursery, not the caller's: a timed-out request is
        abandoned, never awaited. py-libp2p resets a failed stream inside a *shielded* scope,
        and that reset waits for the connection's write lock; towards a peer that reads
        nothing (SIGSTOPped, its TCP buffer full) it waited ~30 s, and the validator's round
        task with it (docs/RELIABILITY.md, "Wedged streams"). A peer with an abandoned request
        stuck is not asked again until it ends; one stuck ``WEDGE_GRACE`` seconds has its
        connection severed (``peers.wedged_severed``)."""
        if len(data) > self._params.max_frame_bytes:
            raise ValueError("request exceeds max_frame_bytes")
        if self._wedged.get(peer_id):
            self._counters.add(C.REQUESTS_SKIPPED_WEDGED)
            raise RequestError(f"{peer_id} is wedged: an abandoned request to it is stuck")
        self._counters.add(C.REQUESTS_SENT)
        answered, finished = trio.Event(), trio.Event()
        answer: list[tuple[int, bytes]] = []
        failure: list[Exception] = []
        scope = trio.CancelScope()

        def deliver(frame: tuple[int, bytes]) -> None:
            answer.append(frame)
            answered.set()

        async def exchange() -> None:
            try:
                with scope:
                    await self._roundtrip(peer_id, protocol_id, data, deliver)
            except Exception as exc:
                failure.append(exc)
            finally:
                answered.set()
                finished.set()

        self._nursery.start_soon(exchange)
        try:
            with trio.move_on_after(timeout):
                await answered.wait()
        finally:
            if not answered.is_set():  # timed out, or the caller was cancelled
                scope.cancel()
                self._abandon(peer_id, finished)
        if not answer:
            if not failure:
                self._counters.add(C.REQUESTS_TIMEOUT)
                if timeout >= STALL_AFTER:  # not just the caller's deadline running out
                    self.note_stalled(peer_id)
                raise RequestTimeout(f"no answer from {peer_id} on {protocol_id} in {timeout}s")
            self._counters.add(C.REQUESTS_FAILED)
            if isinstance(failure[0], RequestError):
                raise failure[0]
            raise RequestError(f"{protocol_id} to {peer_id} failed: {failure[0]!r}") from failure[0]
        kind, body = answer[0]
        if kind == FRAME_ERROR:
            self._counters.add(C.REQUESTS_ERROR_FRAMES)
            raise RequestError(body.decode(errors="replace"))
        if kind != FRAME_RESPONSE:
            raise RequestError(f"expected a response frame, got kind {kind}")
        return body

    async def _roundtrip(
        self,
        peer_id: str,
        protocol_id: str,
        data: bytes,
        deliver: Callable[[tuple[int, bytes]], None],
    ) -> None:
        """One stream: request out, one frame back, handed to ``deliver`` as soon as it is
        read, so the caller never waits on the stream's close."""
        stream = await self._lp.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])
        try:
            await stream.write(encode_frame(FRAME_REQUEST, data))
            deliver(await read_frame(stream, self._params.max_frame_bytes))
        except BaseException:
            # Bounded even when cancelled: a reset may wait on a wedged write lock.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(WEDGE_GRACE),
                contextlib.suppress(Exception),
            ):
                await stream.reset()
            raise
        with trio.move_on_after(WEDGE_GRACE) as closing:
            with contextlib.suppress(Exception):
                await stream.close()
        if closing.cancelled_caught:
            self._counters.add(C.PEERS_WEDGED_SEVERED)
            await self._sever(peer_id)

    def _abandon(self, peer_id: str, finished: trio.Event) -> None:
        self._nursery.start_soon(self._watch_abandoned, peer_id, finished)

    async def _watch_abandoned(self, peer_id: str, finished: trio.Event) -> None:
        """A cancelled request normally ends at once. One still running after ``STUCK_AFTER``
        is stuck writing to a peer that reads nothing: the peer is not asked again meanwhile,
        and after ``WEDGE_GRACE`` its connection is severed, which fails the blocked write."""
        with trio.move_on_after(STUCK_AFTER):
            await finished.wait()
        if finished.is_set():
            return
        self._wedged[peer_id] = self._wedged.get(peer_id, 0) + 1
        try:
            with trio.move_on_after(WEDGE_GRACE - STUCK_AFTER):
                await finished.wait()
            if not finished.is_set():
                self._counters.add(C.PEERS_WEDGED_SEVERED)
                log.info(
                    "peer %s reads nothing (a stream stuck %.0f s): disconnecting",
                    peer_id,
                    WEDGE_GRACE,
                )
                await self._sever(peer_id)
                with trio.move_on_after(WEDGE_GRACE):
                    await finished.wait()
        finally:
            left = self._wedged[peer_id] - 1
            if left:
                self._wedged[peer_id] = left
            else:
                del self._wedged[peer_id]

    async def _sever(self, peer_id: str) -> None:
        """Close the peer's connections at the socket, under the muxer: a clean libp2p close
        first writes a GO_AWAY frame through the same wedged write lock."""
        for conn in self._lp.get_network().get_connections(ID.from_base58(peer_id)):
            secured = getattr(getattr(conn, "muxed_conn", None), "secured_conn", None)
            if secured is None:
                continue
            with trio.move_on_after(1.0), contextlib.suppress(Exception):
                await secured.close()

    # ----- status (network id) handshake ----------------------------------------------

    async def _serve_status(self, data: bytes, peer: str) -> bytes:
        if len(data) > MAX_STATUS_BYTES:
            raise RequestError("status body too long")
        if data and self._network_id and data != self._network_id:
            self._nursery.start_soon(self._refuse, peer, data, STATUS_LINGER)
        elif data == self._network_id:
            self._status_ok.add(peer)
        return self._network_id

    async def _check_status(self, peer: str) -> bool:
        """Ask a newly connected peer for its network id; a peer of another network is
        disconnected (one log line naming both ids) and kept away for a while. Returns
        whether the peer may stay. Without a network id (bare transport) every peer may."""
        if not self._network_id or peer in self._status_ok:
            return True
        try:
            theirs = await self.request(
                peer, STATUS_PROTOCOL, self._network_id, timeout=self._params.dial_timeout
            )
        except RequestError as exc:  # timeouts included: PX decides about silent peers
            self._counters.add(C.STATUS_FAILED)
            log.debug("status exchange with %s failed: %s", peer, exc)
            return peer in self.connected_peers()  # gone (refused by it?): nothing to ask
        if theirs and theirs != self._network_id:  # empty: a bare transport makes no claim
            await self._refuse(peer, theirs)
            return False
        self._status_ok.add(peer)
        return True

    async def _refuse(self, peer: str, theirs: bytes, linger: float = 0.0) -> None:
        """Log, count and disconnect a peer of another network (after ``linger`` seconds,
        so that our status answer reaches it first)."""
        await trio.sleep(linger)
        now = trio.current_time()
        if self._table.backoff_until.get(peer, 0.0) >= now + WRONG_NETWORK_BACK_OFF / 2:
            return  # refused a moment ago (both sides of the exchange noticed)
        self._counters.add(C.GOSSIP_REJECTED, "wrong_network")
        log.warning(
            "peer %s is on network %s, this node on network %s: disconnected",
            peer,
            theirs.hex()[:16] or "(none)",
            self._network_id.hex()[:16],
        )
        if self.on_wrong_network is not None:
            self.on_wrong_network(peer, theirs)
        self._table.back_off(peer, now + WRONG_NETWORK_BACK_OFF)
        with contextlib.suppress(Exception):
            await self._lp.disconnect(ID.from_base58(peer))

    # ----- discovery ------------------------------------------------------------------

    def known_addrs(self) -> list[str]:
        """Addresses worth saving for the next start (``<data-dir>/peers.json``): connected
        peers of our network first, then others learned by PX; at most SAVED_PEERS_MAX."""
        connected = set(self.connected_peers())
        good = [p for p in self._table.addrs if p in connected and p not in self._refused()]
        rest = [p for p in self._table.addrs if p not in connected and p not in self._refused()]
        return [a for p in good + rest for a in self._table.addrs[p][:1]][:SAVED_PEERS_MAX]

    def _refused(self) -> set[str]:
        horizon = trio.current_time() + WRONG_NETWORK_BACK_OFF / 2
        return {p for p, t in self._table.backoff_until.items() if t >= horizon}

    async def _serve_px(self, data: bytes, peer: str) -> bytes:
        try:
            px = decode_px(data)
        except ValueError as exc:
            raise RequestError(f"bad px request: {exc}") from None
        for addr in px.addrs:
            self._table.learn(addr)
        self._table.degree[peer] = px.degree
        connected = set(self.connected_peers())
        sample = self._table.sample_for(peer, connected, self._rng)
        full = len(connected) > self._params.max_peers
        return encode_px(PeerExchange(len(connected), full, tuple(sample)))

    async def _exchange(self, peer: str) -> PeerExchange | None:
        """Ask ``peer`` for addresses. A peer that does not speak our PX protocol (another
        network) or answers garbage is disconnected and backed off; a timeout is not."""
        mine = PeerExchange(len(self._lp.get_connected_peers()), False, tuple(self.addrs))
        try:
            answer = await self.request(
                peer, self._px_protocol, encode_px(mine), timeout=self._params.dial_timeout
            )
            px = decode_px(answer)
        except RequestTimeout:
            self._counters.add(C.PX_TIMEOUTS)  # a busy peer is not a foreign one
            return None
        except (RequestError, ValueError) as exc:
            self._counters.add(C.PX_FAILED)
            log.debug("peer exchange with %s failed: %s", peer, exc)
            self._table.back_off(peer, trio.current_time() + 30.0)
            with contextlib.suppress(Exception):
                await self._lp.disconnect(ID.from_base58(peer))
            return None
        self._counters.add(C.PX_EXCHANGES)
        self._table.degree[peer] = px.degree
        for addr in px.addrs:
            self._table.learn(addr)
        return px

    async def _dial(self, peer: str) -> None:
        now = trio.current_time()
        try:
            infos = [
                PeerInfo(ID.from_base58(peer), [multiaddr.Multiaddr(a.rpartition("/p2p/")[0])])
                for a in self._table.addrs.get(peer, ())
            ]
            with trio.fail_after(self._params.dial_timeout):
                for info in infos[:1]:
                    await self._lp.connect(info)
        except Exception as exc:
            self._counters.add(C.PX_DIAL_FAILURES)
            log.debug("dial %s failed: %r", peer, exc)
            # Exponential per-peer back-off: 5 s, 10 s, ... up to RECONNECT_MAX.
            failures = self._dial_failures.get(peer, 0)
            self._dial_failures[peer] = failures + 1
            self._table.back_off(peer, now + min(5.0 * 2**failures, RECONNECT_MAX))
            return
        self._dial_failures.pop(peer, None)
        self._counters.add(C.PX_DIALS)
        if not await self._check_status(peer):
            return
        px = await self._exchange(peer)
        if px is not None and px.full and len(self._lp.get_connected_peers()) > 1:
            self._table.back_off(peer, now + 30.0)
            with contextlib.suppress(Exception):
                await self._lp.disconnect(ID.from_base58(peer))

    async def _maintain_peers(self, seeds: Sequence[str]) -> None:
        """Keep between ``target_peers`` and ``max_peers`` connections, forever.

        ``seeds`` (bootstrap and saved peers) are learned at start; while no peer at all is
        connected they are tried again, with a pause doubling from 1 s to RECONNECT_MAX."""
        for addr in seeds:
            self._table.learn(addr)
        next_refresh = 0.0
        next_reseed, reseed_pause = 0.0, 1.0
        next_outlet_dial = 0.0
        while True:
            now = trio.current_time()
            connected = set(self.connected_peers())
            refused = self._refused()
            for peer in sorted(connected):
                # It dialled us again during its ban or its wrong-network back-off, or the
                # first close did not take (under load, py-libp2p can keep listing a peer
                # whose close failed): close it again, at the socket this time.
                banned = self.is_banned(peer)
                if banned or peer in refused:
                    self._counters.add(C.REFUSED_BANNED if banned else C.REFUSED_FOREIGN)
                    with contextlib.suppress(Exception):
                        await self._lp.disconnect(ID.from_base58(peer))
                    await self._sever(peer)
                    connected.discard(peer)
                elif gossip_stream_closed(self._pubsub, ID.from_base58(peer)):
                    # Its connection was replaced and gossip stayed on the closed one: close
                    # the new one too, so that both sides start gossip afresh on the next.
                    self._counters.add(C.PX_STALE_GOSSIP_SEVERED)
                    await self._sever(peer)
                    connected.discard(peer)
            for peer in connected - set(self._table.connected_since):
                self._nursery.start_soon(self._check_status, peer)
            self._status_ok &= connected
            self._table.note_connected(connected, now)
            if connected:
                reseed_pause = 1.0
            elif seeds and now >= next_reseed:
                self._reseed(seeds, now)
                next_reseed, reseed_pause = now + reseed_pause, min(2 * reseed_pause, RECONNECT_MAX)
            stuck = {p.to_base58() for p in self._stuck_peers()}
            carriers = {t: self.carriers(t) for t in (*self._sinks, *self._outlets)}
            if seeds and now >= next_outlet_dial and not all(carriers.values()):
                next_outlet_dial = now + OUTLET_REDIAL
                await self._dial_seeds(seeds, connected)
            for victim in self._table.eviction_victims(
                connected,
                self._params.max_peers,
                now,
                self._params.eviction_grace,
                carriers,
                self._params.degree_low,
                frozenset(stuck),
            ):
                self._counters.add(C.EVICTED)
                self._table.back_off(victim, now + 30.0)
                with contextlib.suppress(Exception):
                    await self._lp.disconnect(ID.from_base58(victim))
            if len(connected) < self._params.target_peers or now >= next_refresh:
                ours = connected & self._status_ok if self._network_id else connected
                if ours:
                    await self._exchange(self._rng.choice(sorted(ours)))
                next_refresh = now + 10 * self._params.discovery_interval
            connected = set(self.connected_peers())
            missing = self._params.target_peers - len(connected)
            for peer in self._table.dial_candidates(connected, now, self._rng)[: max(missing, 0)]:
                await self._dial(peer)
            await self._thicken(carriers, set(self.connected_peers()), now)
            jitter = self._rng.uniform(0.75, 1.25)
            await trio.sleep(self._params.discovery_interval * jitter)

    async def _thicken(
        self, carriers: Mapping[str, list[str]], connected: set[str], now: float
    ) -> None:
        """A topic this node joins or publishes into with fewer than D_low live carriers:
        dial one more peer (known carriers of it first), even one over ``max_peers`` — the
        eviction that follows closes a peer that carries nothing thin — once every connection
        is older than the eviction grace (a new one may not have told its topics yet). An
        encoder whose only route to the validators was one relay lost its reveals when that
        relay stopped (docs/RELIABILITY.md, run G): two outlets keep one."""
        self._table.note_carriers(carriers)
        thin = [t for t, peers in carriers.items() if len(peers) < self._params.degree_low]
        # A connection younger than the eviction grace may not have told its topics yet.
        since = self._table.connected_since
        settling = any(now - since.get(p, now) < self._params.eviction_grace for p in connected)
        if not thin or settling or len(connected) > self._params.max_peers:
            return
        for peer in self._table.outlet_candidates(thin, connected, now, self._rng)[:1]:
            self._counters.add(C.PX_THIN_DIALS)
            await self._dial(peer)

    async def _dial_seeds(self, seeds: Sequence[str], connected: set[str]) -> None:
        """No connected peer carries a topic this node joins or publishes into: dial the seed
        peers not connected (a relay joins every topic). A seed connected for longer than the
        eviction grace that still carries none of this node's topics has no working gossip
        stream (opening it timed out under load; py-libp2p does not retry, and such a
        connection carried nothing for a whole run): it is severed (``px.mute_severed``),
        and the next outlet dial connects afresh."""
        self._counters.add(C.PX_OUTLET_DIALS)
        now = trio.current_time()
        since = self._table.connected_since
        topics = (*self._sinks, *self._outlets)
        for peer in self._dialable_seeds(seeds):
            if peer not in connected:
                await self._dial(peer)
            elif now - since.get(peer, now) >= self._params.eviction_grace and not any(
                peer in self.topic_peers(t) for t in topics
            ):
                self._counters.add(C.PX_MUTE_SEVERED)
                await self._sever(peer)

    def _reseed(self, seeds: Sequence[str], now: float) -> None:
        """No peer left: make every seed peer dialable again (unless it is on another network)."""
        self._counters.add(C.PX_RESEEDS)
        self._dialable_seeds(seeds)

    def _dialable_seeds(self, seeds: Sequence[str]) -> list[str]:
        """The seed peers not on another network, their dial back-off lifted."""
        refused = self._refused()
        peers = [p for p in map(self._table.learn, seeds) if p is not None and p not in refused]
        for peer in peers:
            self._table.backoff_until.pop(peer, None)
        return peers


@asynccontextmanager
async def open_host(
    *,
    listen: str,
    bootstrap: Sequence[str],
    params: GossipParams,
    identity_seed: bytes | None = None,
    network_tag: str = "",
    network_id: bytes = b"",
    counters: Counters | None = None,
) -> AsyncIterator[Host]:
    """Start a libp2p host with gossipsub and peer exchange; stop it when the block exits.

    ``listen`` is a multiaddr such as ``/ip4/127.0.0.1/tcp/0``; ``bootstrap`` lists full
    multiaddrs (with ``/p2p/<id>``). ``identity_seed`` (32 bytes) fixes the libp2p key;
    by default every start gets a fresh one. Peers with a different ``network_tag`` do not
    speak our peer-exchange protocol and are disconnected; given ``network_id``, each new
    connection first exchanges network ids on STATUS_PROTOCOL and a peer of another network
    is refused with one log line and ``rejected.wrong_network``. ``counters``: the node's
    registry (node/counters.py), shared with its ingest; a fresh one by default."""
    adopt_libp2p_logging()
    batch_window_updates()
    counters = Counters() if counters is None else counters
    listen_addr = multiaddr.Multiaddr(listen)
    lp = new_host(
        key_pair=create_new_key_pair(identity_seed),
        listen_addrs=[listen_addr],
        connection_config=connection_config(),
    )
    keep_new_connections_on_close(lp.get_network())  # type: ignore[arg-type]
    router = CountingGossipSub(
        counters,
        protocols=[GOSSIP_PROTOCOL],
        degree=params.degree,
        degree_low=params.degree_low,
        degree_high=params.degree_high,
        heartbeat_interval=params.heartbeat_interval,
        gossip_window=params.gossip_window,
        gossip_history=params.gossip_history,
        prune_back_off=params.prune_back_off,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=params.spam_limit is not None,
        max_messages_per_topic_per_second=params.spam_limit or 10.0,
        eclipse_protection_enabled=False,
    )
    # No libp2p message signing (strict_signing=False): dlnet's Ed25519 signature covers
    # every message's content, and the id is its content hash (PROTOCOL.md §6).
    pubsub = DeliveringPubsub(
        lp,
        router,
        seen_ttl=params.seen_ttl,
        validation_timeout=params.validation_timeout,
        msg_id_constructor=content_id,
        strict_signing=False,
    )
    px_protocol = f"/dlnet/{network_tag}/px/1" if network_tag else "/dlnet/px/1"
    try:
        async with (
            lp.run([listen_addr]),
            background_trio_service(pubsub),
            background_trio_service(router),
            trio.open_nursery() as nursery,
        ):
            await pubsub.wait_until_ready()
            start_seqnos_fresh(pubsub)
            host = Host(lp, pubsub, router, params, counters, nursery, px_protocol, network_id)
            host.set_request_handler(px_protocol, host._serve_px)
            host.set_request_handler(STATUS_PROTOCOL, host._serve_status)
            nursery.start_soon(host._maintain_peers, list(bootstrap))
            nursery.start_soon(host._watch_loop)
            try:
                yield host
            finally:
                nursery.cancel_scope.cancel()
                # Close every connection before the pubsub and router services stop: a
                # message read after pubsub's task group closed raised out of py-libp2p's
                # stream handler ("Nursery is closed to new arrivals": exit code 1 at
                # SIGTERM), and a wedged stream would hold our task group open.
                with trio.CancelScope(shield=True):
                    for peer in host.connected_peers():
                        await host._sever(peer)
    finally:
        pubsub.seen_messages.stop()  # joins the seen-cache sweeper thread libp2p started
