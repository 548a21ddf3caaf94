"""Generic libp2p transport for dlnet: gossipsub topics and framed request/response streams.

It knows bytes, topics and peers, never dlnet message semantics. Every known pitfall of
py-libp2p 0.8.1 (see /work/shared/FINDINGS.md) is handled here deliberately:

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
* restarting with the same libp2p key leaves stale state at the peers: a fresh key per
  start unless ``identity_seed`` is given (the dlnet signing key is a separate thing);
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
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from hashlib import sha256
from types import MappingProxyType
from typing import Any

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

from dlnet.node.discovery import PeerExchange, PeerTable, decode_px, encode_px

log = logging.getLogger(__name__)

GOSSIP_PROTOCOL = TProtocol("/meshsub/1.1.0")


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
    """A peer that forwarded this many rejected messages is disconnected and banned."""
    ban_seconds: float = 60.0
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
        for name in ("request_timeout", "discovery_interval", "dial_timeout"):
            need(getattr(self, name) > 0, f"{name} must be > 0")


class Verdict(Enum):
    """Outcome of a topic validator. Neither REJECT nor IGNORE is relayed or delivered;
    REJECT also counts against the forwarding peer (ban at ``reject_ban_threshold``)."""

    ACCEPT = "accept"
    REJECT = "reject"
    IGNORE = "ignore"


ValidatorResult = Verdict | tuple[Verdict, str]
"""A bare verdict, or a verdict with a reason used in the counter name."""
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


class _Counters:
    def __init__(self) -> None:
        self.values: dict[str, int] = {"published": 0, "delivered": 0, "dropped": 0}

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n
        if name.startswith("dropped."):
            self.values["dropped"] += n


class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    async def take(self) -> None:
        while True:
            now = trio.current_time()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await trio.sleep((1.0 - self.tokens) / self.rate)


class _CountingGossipSub(GossipSub):
    """GossipSub whose silent drops (spam limit, full outbound queue) are counted."""

    def __init__(self, counters: _Counters, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._counters = counters

    def _check_spam_protection(self, peer_id: ID, msg: rpc_pb2.Message) -> bool:
        ok = super()._check_spam_protection(peer_id, msg)
        if not ok:
            self._counters.add("dropped.spam")
        return ok

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        ok = super()._check_equivocation(msg)
        if not ok:
            self._counters.add("dropped.equivocation")
        return ok

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        if rpc.publish:
            self._counters.add(f"dropped.outbound_{reason}", len(rpc.publish))
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class _DeliveringPubsub(Pubsub):
    """Pubsub that hands accepted messages to ``deliver`` instead of a 32-slot channel."""

    deliver: Callable[[str, bytes, ID], None] | None = None
    _validated: tuple[rpc_pb2.Message, ID] | None = None

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
        counters: _Counters,
        nursery: trio.Nursery,
        px_protocol: str,
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
        self._rejects: dict[str, int] = {}
        self.peer_id: str = lp.get_id().to_base58()
        # As others dial them (and as peer exchange sends them): ending in /p2p/<peer id>.
        self.addrs: list[str] = [
            a if "/p2p/" in a else f"{a}/p2p/{self.peer_id}" for a in map(str, lp.get_addrs())
        ]
        self._table = PeerTable(self.peer_id)
        pubsub.deliver = self._deliver

    @property
    def counters(self) -> Mapping[str, int]:
        """Live read-only counters: published, delivered, accepted, rejected[.reason],
        ignored[.reason], dropped[.reason] (must stay 0), px.*, requests.*, evicted, banned."""
        return MappingProxyType(self._counters.values)

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self._lp.get_connected_peers())

    def topic_peers(self, topic: str) -> list[str]:
        """Connected peers known to be subscribed to ``topic``."""
        return sorted(p.to_base58() for p in self._pubsub.peer_topics.get(topic, ()))

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

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data``: paced by the token bucket, in call order, and only once every
        outbound peer queue has room (a queue stuck past ``backpressure_timeout`` is
        sent to anyway and any resulting drop is counted)."""
        if len(data) > self._params.max_message_bytes:
            raise ValueError(f"message of {len(data)} bytes exceeds max_message_bytes")
        async with self._publish_lock:
            await self._bucket.take()
            await self._wait_outbound_room()
            await self._pubsub.publish(topic, data)
            self._counters.add("published")

    async def _wait_outbound_room(self) -> None:
        deadline = trio.current_time() + self._params.backpressure_timeout
        while any(len(q) > OutBoundQueueSize // 2 for q in self._pubsub.peer_queues.values()):
            if trio.current_time() >= deadline:
                self._counters.add("publish.backpressure_timeout")
                return
            await trio.sleep(0.005)

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
            self._counters.add("accepted")
            return True
        kind = "rejected" if verdict is Verdict.REJECT else "ignored"
        self._counters.add(kind)
        self._counters.add(f"{kind}.{reason}")
        if verdict is Verdict.REJECT:
            self._rejects[peer] = self._rejects.get(peer, 0) + 1
            if self._rejects[peer] == self._params.reject_ban_threshold:
                self._nursery.start_soon(self._ban, fwd)
        return False

    def _deliver(self, topic: str, data: bytes, forwarder: ID) -> None:
        sink = self._sinks.get(topic)
        if sink is not None:
            sink.send_nowait((data, forwarder.to_base58()))  # unbounded: never blocks

    async def _dispatch(
        self, recv: trio.MemoryReceiveChannel[tuple[bytes, str]], handler: MessageHandler
    ) -> None:
        async for data, peer in recv:
            self._counters.add("delivered")
            try:
                await handler(data, peer)
            except Exception:
                log.exception("message handler failed")
                self._counters.add("handler_errors")

    async def _ban(self, peer: ID) -> None:
        self._counters.add("banned")
        self._table.back_off(peer.to_base58(), trio.current_time() + self._params.ban_seconds)
        self._pubsub.add_to_blacklist(peer)
        with contextlib.suppress(Exception):
            await self._lp.disconnect(peer)
        await trio.sleep(self._params.ban_seconds)
        self._pubsub.remove_from_blacklist(peer)
        self._rejects.pop(peer.to_base58(), None)

    # ----- request / response ---------------------------------------------------------

    def set_request_handler(self, protocol_id: str, handler: RequestHandler) -> None:
        """Serve ``protocol_id``: one request frame in, one response or error frame out.
        A handler raising :class:`RequestError` sends its message; anything else sends
        ``internal error``."""

        async def serve(stream: INetStream) -> None:
            await self._serve(stream, handler)

        self._lp.set_stream_handler(TProtocol(protocol_id), serve)

    async def _serve(self, stream: INetStream, handler: RequestHandler) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        max_bytes = self._params.max_frame_bytes
        try:
            with trio.fail_after(self._params.request_timeout):
                kind, body = await read_frame(stream, max_bytes)
                if kind != FRAME_REQUEST:
                    raise RequestError(f"expected a request frame, got kind {kind}")
                try:
                    answer = encode_frame(FRAME_RESPONSE, await handler(body, peer))
                    if len(answer) - _FRAME_HEADER.size > max_bytes:
                        raise RequestError("response exceeds max_frame_bytes")
                except RequestError as exc:
                    answer = encode_frame(FRAME_ERROR, str(exc).encode()[:MAX_ERROR_BYTES])
                    self._counters.add("requests.answered_error")
                except Exception:
                    log.exception("request handler failed")
                    answer = encode_frame(FRAME_ERROR, b"internal error")
                    self._counters.add("requests.answered_error")
                await stream.write(answer)
            self._counters.add("requests.served")
            await stream.close()
        except Exception as exc:  # bad frame, timeout, reset: drop this stream only
            log.debug("inbound request from %s failed: %r", peer, exc)
            self._counters.add("requests.bad_inbound")
            with contextlib.suppress(Exception):
                await stream.reset()

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float) -> bytes:
        """Send one request to a connected (or dialable) peer and return the response body.

        Raises :class:`RequestTimeout` after ``timeout`` seconds, :class:`RequestError` on an
        error frame, an oversized or malformed frame, or any transport failure."""
        if len(data) > self._params.max_frame_bytes:
            raise ValueError("request exceeds max_frame_bytes")
        self._counters.add("requests.sent")
        stream: INetStream | None = None
        closed = False
        try:
            with trio.fail_after(timeout):
                stream = await self._lp.new_stream(
                    ID.from_base58(peer_id), [TProtocol(protocol_id)]
                )
                await stream.write(encode_frame(FRAME_REQUEST, data))
                kind, body = await read_frame(stream, self._params.max_frame_bytes)
            await stream.close()
            closed = True
        except trio.TooSlowError:
            self._counters.add("requests.timeout")
            raise RequestTimeout(
                f"no answer from {peer_id} on {protocol_id} in {timeout}s"
            ) from None
        except RequestError:
            self._counters.add("requests.failed")
            raise
        except Exception as exc:
            self._counters.add("requests.failed")
            raise RequestError(f"{protocol_id} to {peer_id} failed: {exc!r}") from exc
        finally:
            if stream is not None and not closed:
                with contextlib.suppress(Exception):
                    await stream.reset()
        if kind == FRAME_ERROR:
            self._counters.add("requests.error_frames")
            raise RequestError(body.decode(errors="replace"))
        if kind != FRAME_RESPONSE:
            raise RequestError(f"expected a response frame, got kind {kind}")
        return body

    # ----- discovery ------------------------------------------------------------------

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
            self._counters.add("px.timeouts")  # a busy peer is not a foreign one
            return None
        except (RequestError, ValueError) as exc:
            self._counters.add("px.failed")
            log.debug("peer exchange with %s failed: %s", peer, exc)
            self._table.back_off(peer, trio.current_time() + 30.0)
            with contextlib.suppress(Exception):
                await self._lp.disconnect(ID.from_base58(peer))
            return None
        self._counters.add("px.exchanges")
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
            self._counters.add("px.dial_failures")
            log.debug("dial %s failed: %r", peer, exc)
            self._table.back_off(peer, now + 5.0)
            return
        self._counters.add("px.dials")
        px = await self._exchange(peer)
        if px is not None and px.full and len(self._lp.get_connected_peers()) > 1:
            self._table.back_off(peer, now + 30.0)
            with contextlib.suppress(Exception):
                await self._lp.disconnect(ID.from_base58(peer))

    async def _maintain_peers(self, bootstrap: Sequence[str]) -> None:
        """Keep between ``target_peers`` and ``max_peers`` connections, forever."""
        for addr in bootstrap:
            self._table.learn(addr)
        next_refresh = 0.0
        while True:
            now = trio.current_time()
            connected = set(self.connected_peers())
            self._table.note_connected(connected, now)
            for victim in self._table.eviction_victims(
                connected, self._params.max_peers, now, self._params.eviction_grace
            ):
                self._counters.add("evicted")
                self._table.back_off(victim, now + 30.0)
                with contextlib.suppress(Exception):
                    await self._lp.disconnect(ID.from_base58(victim))
            if len(connected) < self._params.target_peers or now >= next_refresh:
                if connected:
                    await self._exchange(self._rng.choice(sorted(connected)))
                next_refresh = now + 10 * self._params.discovery_interval
            connected = set(self.connected_peers())
            missing = self._params.target_peers - len(connected)
            for peer in self._table.dial_candidates(connected, now, self._rng)[: max(missing, 0)]:
                await self._dial(peer)
            jitter = self._rng.uniform(0.75, 1.25)
            await trio.sleep(self._params.discovery_interval * jitter)


@asynccontextmanager
async def open_host(
    *,
    listen: str,
    bootstrap: Sequence[str],
    params: GossipParams,
    identity_seed: bytes | None = None,
    network_tag: str = "",
) -> AsyncIterator[Host]:
    """Start a libp2p host with gossipsub and peer exchange; stop it when the block exits.

    ``listen`` is a multiaddr such as ``/ip4/127.0.0.1/tcp/0``; ``bootstrap`` lists full
    multiaddrs (with ``/p2p/<id>``). ``identity_seed`` (32 bytes) fixes the libp2p key;
    by default every start gets a fresh one. Peers with a different ``network_tag`` do not
    speak our peer-exchange protocol and are disconnected."""
    counters = _Counters()
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
    pubsub = _DeliveringPubsub(lp, router, seen_ttl=params.seen_ttl, msg_id_constructor=_content_id)
    px_protocol = f"/dlnet/{network_tag}/px/1" if network_tag else "/dlnet/px/1"
    try:
        async with (
            lp.run([listen_addr]),
            background_trio_service(pubsub),
            background_trio_service(router),
            trio.open_nursery() as nursery,
        ):
            await pubsub.wait_until_ready()
            host = Host(lp, pubsub, router, params, counters, nursery, px_protocol)
            host.set_request_handler(px_protocol, host._serve_px)
            nursery.start_soon(host._maintain_peers, list(bootstrap))
            try:
                yield host
            finally:
                nursery.cancel_scope.cancel()
    finally:
        pubsub.seen_messages.stop()  # joins the seen-cache sweeper thread libp2p started
