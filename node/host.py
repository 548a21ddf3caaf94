"""Generic libp2p transport for dlnet: gossipsub topics and framed request/response streams.

It knows bytes, topics and peers, never dlnet message semantics. Every known pitfall of
py-libp2p 0.8.1 is handled here deliberately (each pitfall below was measured):

* spam protection counts messages per *forwarder* and topic, so a relay of many
  publishers trips it: it is off by default (``spam_limit=None``) and publishing is paced
  by a token bucket that must stay below the limit whenever it is on;
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
import importlib.metadata
import logging
import math
import os
import random
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from types import MappingProxyType
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import OutBoundQueueSize
from libp2p.tools.anyio_service import background_trio_service

from dlnet.node import counters as C
from dlnet.node.counters import Counters
from dlnet.node.discovery import PeerExchange, PeerTable, decode_px, encode_px

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
STALL_SKIP = 30.0
"""Seconds a peer that let a request time out is asked last and counts as no carrier."""
STALL_AFTER = 2.0
"""A request unanswered this long, when it was given at least that long, notes its peer
stalled: a live peer answers a sync ask or takes a reveal push in well under that."""
WEDGE_GRACE = 5.0
"""Seconds an abandoned request may take to end before the peer's connection is severed."""
"""Seconds between two rounds of seed dials while a topic of this node has no carrier."""


# The swarm's own connection manager would fight the degree bound: its auto-connector dials
# peerstore peers up to (low + high watermark) / 2 and its pruner trims above the high
# watermark. Watermarks 0 make the dial target 0; an effectively infinite grace period
# keeps the pruner from closing anything. Peer exchange alone manages connections.
def _connection_config() -> ConnectionConfig:
    return ConnectionConfig(min_connections=0, low_watermark=0, high_watermark=0, grace_period=1e12)


@dataclass(frozen=True)
class GossipParams:
    """Transport parameters; the defaults are the measured testnet settings (FINDINGS)."""

    degree: int = 3
    degree_low: int = 2
    degree_high: int = 4
    heartbeat_interval: float = 1.0
    target_peers: int = 3
    """Dial more peers (found by peer exchange) while fewer than this are connected."""
    max_peers: int = 4
    """Hard connection bound; <= degree_high so the heartbeat never prunes for excess."""
    publish_rate: float = 5.0
    """Token bucket refill for this host's own publishes, messages/s over all topics."""
    publish_burst: int = 5
    spam_limit: float | None = None
    """gossipsub spam protection, messages/s per forwarder and topic; None = off."""
    max_message_bytes: int = 64 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 10.0
    """Bound on serving one inbound request (read, handle, answer)."""
    discovery_interval: float = 1.0
    eviction_grace: float = 3.0
    dial_timeout: float = 5.0
    prune_back_off: int = 10
    gossip_window: int = 3
    gossip_history: int = 5
    seen_ttl: int = 20
    """Seconds a message id stays in the duplicate filter. Gossip repeats a message for
    gossip_history heartbeats only; the store catches anything older, and a re-send after
    this long reaches the topic validator, where it is counted (ignored:duplicate)."""
    reject_ban_threshold: int = 20
    """A peer whose penalty reaches this many points is disconnected and banned. A rejected
    gossip message, a bad request and a request over the rate limit cost 1 point each, an
    ignored gossip message (duplicate, old or future round) ``ignore_penalty``; points decay
    by ``penalty_decay`` per second."""
    ignore_penalty: float = 0.05
    penalty_decay: float = 0.5
    ban_seconds: float = 60.0
    request_rate: float = 20.0
    """Inbound requests per second a peer may make (token bucket over all protocols)."""
    request_burst: int = 40
    backpressure_timeout: float = 5.0
    """Longest ``publish`` waits for a full outbound queue before sending anyway."""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"GossipParams: {what}")

        need(
            0 < self.degree_low <= self.degree <= self.degree_high, "need 0 < D_low <= D <= D_high"
        )
        need(0 < self.target_peers <= self.max_peers, "need 0 < target_peers <= max_peers")
        need(self.heartbeat_interval > 0, "heartbeat_interval must be > 0")
        need(self.publish_rate > 0 and self.publish_burst >= 1, "publish_rate > 0, burst >= 1")
        if self.spam_limit is not None:
            # In any one-second window the bucket releases at most burst + rate messages.
            need(
                self.publish_burst + self.publish_rate < self.spam_limit,
                f"publish_burst + publish_rate must stay below spam_limit={self.spam_limit}",
            )
        need(0 < self.max_message_bytes <= self.max_frame_bytes, "0 < max_message <= max_frame")
        need(self.request_rate > 0 and self.request_burst >= 1, "request_rate > 0, burst >= 1")
        for name in ("request_timeout", "discovery_interval", "dial_timeout"):
            need(getattr(self, name) > 0, f"{name} must be > 0")


class Verdict(Enum):
    """Outcome of a topic validator. Neither REJECT nor IGNORE is relayed or delivered;
    REJECT also counts against the forwarding peer (ban at ``reject_ban_threshold``)."""

    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


ValidatorResult = Verdict | tuple[Verdict, str]
"""A bare verdict, or a verdict with a reason (the label of the rejected/ignored counter)."""
Validator = Callable[[str, bytes, str], ValidatorResult]
"""(topic, data, forwarding peer id) -> verdict; synchronous and cheap, runs before relay."""
MessageHandler = Callable[[bytes, str], Awaitable[None]]
RequestHandler = Callable[[bytes, str], Awaitable[bytes]]


class RequestError(Exception):
    """A request failed: error frame from the peer, transport failure or bad frame.

    Raised by a request handler, its message travels back in the error frame."""


class RequestTimeout(RequestError):
    """No complete answer within the timeout."""


# Request/response frames: u8 kind || u32be length || body.
FRAME_REQUEST = 1
FRAME_RESPONSE = 2
FRAME_ERROR = 3
MAX_ERROR_BYTES = 1024
_FRAME_HEADER = struct.Struct(">BI")


def encode_frame(kind: int, body: bytes) -> bytes:
    return _FRAME_HEADER.pack(kind, len(body)) + body


async def _read_exact(stream: INetStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise RequestError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: INetStream, max_bytes: int) -> tuple[int, bytes]:
    """Read one frame; a length above ``max_bytes`` or an unknown kind is an error."""
    kind, length = _FRAME_HEADER.unpack(await _read_exact(stream, _FRAME_HEADER.size))
    if kind not in (FRAME_REQUEST, FRAME_RESPONSE, FRAME_ERROR):
        raise RequestError(f"unknown frame kind {kind}")
    if length > max_bytes:
        raise RequestError(f"frame of {length} bytes exceeds the bound of {max_bytes}")
    return kind, await _read_exact(stream, length)


class _TokenBucket:
    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time() if now is None else now

    def try_take(self, now: float) -> bool:
        """Take one token if there is one (no waiting)."""
        self.tokens = min(self.burst, self.tokens + max(now - self.stamp, 0.0) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    async def take(self) -> None:
        while not self.try_take(trio.current_time()):
            await trio.sleep((1.0 - self.tokens) / self.rate)


class PeerPenalties:
    """One penalty score per peer, shared by every kind of misbehaviour, with linear decay,
    per-peer request token buckets, bans, and a log bounded under a flood (pure bookkeeping;
    the host acts on `penalize`'s answer). Times are ``trio.current_time()`` seconds."""

    def __init__(self, params: GossipParams) -> None:
        self.params = params
        self._score: dict[str, tuple[float, float]] = {}  # peer -> (points, at)
        self._buckets: dict[str, _TokenBucket] = {}
        self._banned: dict[str, float] = {}  # peer -> ban end
        self._logged: dict[tuple[str, str], int] = {}

    def score(self, peer: str, now: float) -> float:
        points, at = self._score.get(peer, (0.0, now))
        return max(0.0, points - (now - at) * self.params.penalty_decay)

    def penalize(self, peer: str, reason: str, points: float, now: float) -> bool:
        """Charge ``peer``; True exactly when this charge starts a ban."""
        self.note(peer, reason)
        if self.banned(peer, now):
            return False
        total = self.score(peer, now) + points
        if total >= self.params.reject_ban_threshold:
            self._score.pop(peer, None)
            self._banned[peer] = now + self.params.ban_seconds
            log.warning(
                "peer %s banned for %.0fs (last: %s)", peer, self.params.ban_seconds, reason
            )
            return True
        self._score[peer] = (total, now)
        return False

    def banned(self, peer: str, now: float) -> bool:
        end = self._banned.get(peer)
        if end is None:
            return False
        if now >= end:
            del self._banned[peer]
            return False
        return True

    def allow_request(self, peer: str, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) > 4096:  # peers come and go: forget idle buckets
                self._buckets.clear()
            bucket = self._buckets[peer] = _TokenBucket(
                self.params.request_rate, self.params.request_burst, now
            )
        return bucket.try_take(now)

    def note(self, peer: str, reason: str) -> None:
        """One log line per (peer, reason) at the 1st, 2nd, 4th, 8th, ... occurrence: the
        log grows with the logarithm of a flood, never a traceback."""
        key = (peer, reason)
        n = self._logged.get(key, 0) + 1
        if len(self._logged) > 4096:
            self._logged.clear()
        self._logged[key] = n
        if n & (n - 1) == 0:
            log.info("rejected from %s: %s (%d so far)", peer, reason, n)


LIBP2P_VERSION = "0.8.1"
"""The py-libp2p version the overrides below were written against (checked at import)."""
if importlib.metadata.version("libp2p") != LIBP2P_VERSION:  # pragma: no cover
    raise ImportError(
        f"dlnet.node.host overrides py-libp2p {LIBP2P_VERSION} internals; "
        f"libp2p {importlib.metadata.version('libp2p')} is installed — pip install "
        f"libp2p=={LIBP2P_VERSION}"
    )


def _ignore_sender_record(msg: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
    """dlnet sends no signed peer records and verifies none it receives: py-libp2p 0.8.1
    otherwise checks the Ed25519 envelope of every RPC that carries one, before anything else
    (PROTOCOL.md §6 Gossipsub, "libp2p message signing"). The peer is authenticated by the
    Noise handshake; every dlnet message by dlnet's own signature."""
    return True


# py-libp2p calls it by these module-level names (pubsub's read loop, gossipsub's handle_rpc).
_pubsub_module.maybe_consume_signed_record = _ignore_sender_record  # type: ignore[attr-defined]
_gossipsub_module.maybe_consume_signed_record = _ignore_sender_record  # type: ignore[attr-defined]


class _CountingGossipSub(GossipSub):
    """GossipSub whose silent drops (spam limit, full outbound queue) are counted."""

    def __init__(self, counters: Counters, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counters = counters

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        ok = super()._check_spam_protection(peer_id, msg)
        if not ok:
            self._counters.add(C.DROPPED, "spam")
        return ok

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        """Off: without libp2p message signing the (origin, seqno) pair is not
        authenticated, so a relay could claim an honest origin's next seqno for another valid
        message and have the real one dropped from relaying. dlnet detects equivocation by
        its own signed slots (§5 Admission); the message id is the content hash."""
        return True

    def add_peer(self, peer_id: ID, protocol_id: TProtocol | None) -> None:
        self._forget_origin(peer_id)  # a peer id back after a restart starts afresh
        super().add_peer(peer_id, protocol_id)

    def remove_peer(self, peer_id: ID) -> None:
        super().remove_peer(peer_id)
        self._forget_origin(peer_id)

    def _forget_origin(self, peer_id: ID) -> None:
        """Drop the (origin, seqno) equivocation entries of messages ``peer_id`` published:
        a restarted process may reuse those seqnos for new messages. (Prune back-offs are
        kept across reconnects, as the gossipsub spec asks.)"""
        origin = peer_id.to_bytes()
        stale = [k for k, m in self.equivocation_detection.items() if m.from_id == origin]
        for key in stale:
            del self.equivocation_detection[key]

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if rpc.publish:
            self._counters.add(C.DROPPED, f"outbound_{reason}", len(rpc.publish))
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class _DeliveringPubsub(Pubsub):
    """Pubsub that hands accepted messages to ``deliver`` instead of a 32-slot channel, and
    sends no signed peer record (``senderRecord``) in any RPC."""

    deliver: Callable[[str, bytes, ID], None] | None = None
    _validated: tuple[rpc_pb2.Message, ID] | None = None

    def get_hello_packet(self) -> rpc_pb2.RPC:
        packet = super().get_hello_packet()
        packet.ClearField("senderRecord")
        return packet

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        # Every other RPC (publish, IWANT answers, announcements, control) leaves here.
        rpc_msg.ClearField("senderRecord")
        return await super().write_msg(stream, rpc_msg)

    async def validate_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder == self.my_id:
            return  # our own publish: built locally, topic validators judge remote input
        await super().validate_msg(msg_forwarder, msg)
        # push_msg calls notify_subscriptions without awaiting in between, so this
        # remembers the forwarder for exactly that call.
        self._validated = (msg, msg_forwarder)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        validated, self._validated = self._validated, None
        if publish_message.from_id == self.my_id.to_bytes() or self.deliver is None:
            return
        if validated is not None and validated[0] is publish_message:
            forwarder = validated[1]
        else:
            forwarder = ID(publish_message.from_id)
        for topic in publish_message.topicIDs:
            if topic in self.topic_ids:
                self.deliver(topic, publish_message.data, forwarder)


def _content_id(msg: rpc_pb2.Message) -> bytes:
    """Message id = SHA-256 of the payload (DESIGN: ids are content hashes)."""
    return sha256(msg.data).digest()


class Host:
    """A running libp2p node; obtain one with :func:`open_host`."""

    def __init__(
        self,
        lp: IHost,
        pubsub: _DeliveringPubsub,
        router: _CountingGossipSub,
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
        self._bucket = _TokenBucket(params.publish_rate, params.publish_burst)
        self._publish_lock = trio.Lock()
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

    async def subscribe(self, topic: str, validator: Validator, handler: MessageHandler) -> None:
        """Join ``topic``: ``validator`` runs before relaying; accepted messages from other
        peers reach ``handler(data, forwarding peer id)`` one at a time, in arrival order."""
        if topic in self._sinks:
            raise ValueError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[tuple[bytes, str]](math.inf)
        self._sinks[topic] = send
        self._pubsub.set_topic_validator(
            topic, lambda fwd, msg: self._validate(topic, validator, fwd, msg), False
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
        """Publish ``data``: paced by the token bucket, in call order, and only once every
        outbound peer queue has room (a queue stuck past ``backpressure_timeout`` is
        sent to anyway and any resulting drop is counted). Into a topic it publishes outside,
        it first waits up to ``backpressure_timeout`` for a connected peer that joined it;
        with none, the message reaches nobody by gossip (``publish.no_peers``: it is stored,
        and validators fetch it by pull repair)."""
        if len(data) > self._params.max_message_bytes:
            raise ValueError(f"message of {len(data)} bytes exceeds max_message_bytes")
        async with self._publish_lock:
            await self._bucket.take()
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
            verdict, reason = Verdict.REJECT, "oversize"
        else:
            try:
                result = validator(topic, msg.data, peer)
            except Exception:
                log.exception("topic validator for %s raised", topic)
                result = (Verdict.REJECT, "validator_error")
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

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        """Charge ``peer`` for misbehaviour (counted as ``penalty.<reason>``); at
        ``reject_ban_threshold`` points it is disconnected and banned for ``ban_seconds``."""
        self._counters.add(C.PENALTY, reason)
        if self.penalties.penalize(peer, reason, points, trio.current_time()):
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
        self._counters.add(C.BANNED)
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
                    if len(answer) - _FRAME_HEADER.size > max_bytes:
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
            for peer in sorted(connected):
                if self.is_banned(peer):  # it dialled us again during its ban
                    self._counters.add(C.REFUSED_BANNED)
                    with contextlib.suppress(Exception):
                        await self._lp.disconnect(ID.from_base58(peer))
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
        peers not connected (a relay joins every topic)."""
        self._counters.add(C.PX_OUTLET_DIALS)
        for peer in self._dialable_seeds(seeds):
            if peer not in connected:
                await self._dial(peer)

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
    counters = Counters() if counters is None else counters
    listen_addr = multiaddr.Multiaddr(listen)
    lp = new_host(
        key_pair=create_new_key_pair(identity_seed),
        listen_addrs=[listen_addr],
        connection_config=_connection_config(),
    )
    router = _CountingGossipSub(
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
    pubsub = _DeliveringPubsub(
        lp,
        router,
        seen_ttl=params.seen_ttl,
        msg_id_constructor=_content_id,
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
            # py-libp2p starts seqnos at int(time.time()) and counts one per publish, so a
            # node restarted with the same key soon after publishing k messages reuses the
            # last k seqnos; gossipsub's (origin, seqno) equivocation check at every peer
            # then drops its new messages. Nanoseconds (as go-libp2p) stay ahead of any
            # earlier run of this key unless it published more than 1e9 messages a second.
            pubsub.counter = time.time_ns()
            host = Host(lp, pubsub, router, params, counters, nursery, px_protocol, network_id)
            host.set_request_handler(px_protocol, host._serve_px)
            host.set_request_handler(STATUS_PROTOCOL, host._serve_status)
            nursery.start_soon(host._maintain_peers, list(bootstrap))
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
