"""What a node's roles, sync and reveal push need of the network, as one interface, with its
parameters, verdicts and errors (no libp2p import: the CLI and roles load without it).

`dlnet.node.host.Host` implements it over py-libp2p (gossipsub topics, request/response
streams, peer upkeep); tests implement it in memory, to run whole networks of roles in one
process under trio's mock clock. Roles never reach past it into libp2p."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

STALL_SKIP = 30.0
"""Seconds a peer that let a request time out is asked last and counts as no carrier (every
transport keeps this rule: sync orders its peers by it)."""


@dataclass(frozen=True)
class GossipParams:
    """Transport parameters; the defaults are the measured testnet settings (docs/FINDINGS.md)."""

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
    validation_timeout: float = 30.0
    """Bound on a topic's slow (async) validator. py-libp2p records a message that timed out
    as invalid for 5 minutes and drops every later copy unseen, so it must exceed the
    longest honest wait: 100 new encoder keys queue ~7 s of registration proofs at a node."""

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
"""A bare verdict, or a verdict with a reason used in the counter name."""

Validator = Callable[[str, bytes, str], ValidatorResult]
"""(topic, data, forwarding peer id) -> verdict; synchronous and cheap, runs before relay."""

AsyncValidator = Callable[[str, bytes, str], Awaitable[ValidatorResult]]
"""As Validator, for a topic whose check may wait (work in a thread): the event loop runs
meanwhile, and the message is relayed once the verdict is ACCEPT."""
MessageHandler = Callable[[bytes, str], Awaitable[None]]

RequestHandler = Callable[[bytes, str], Awaitable[bytes]]


class RequestError(Exception):
    """A request failed: error frame from the peer, transport failure or bad frame.

    Raised by a request handler, its message travels back in the error frame."""


class RequestTimeout(RequestError):
    """No complete answer within the timeout."""


class Transport(Protocol):
    def connected_peers(self) -> list[str]:
        """Peer ids this node holds a connection to."""
        ...

    def carriers(self, topic: str) -> list[str]:
        """Connected peers that joined ``topic`` and answer: a reveal push goes to those of
        the embedding topic, sync asks them first."""
        ...

    def stalled(self, peer: str) -> bool:
        """Whether ``peer`` let a request time out lately (sync leaves it out)."""
        ...

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        """Charge ``peer`` for misbehaviour; enough points ban it."""
        ...

    async def subscribe(
        self,
        topic: str,
        validator: Validator,
        handler: MessageHandler,
        *,
        slow: AsyncValidator | None = None,
    ) -> None:
        """Join ``topic``: ``validator`` (or, given, the awaited ``slow`` one) judges each
        message before it is relayed; accepted messages from other peers reach ``handler``
        one at a time, in arrival order."""
        ...

    def publish_outside(self, topic: str) -> None:
        """Publish into ``topic`` without joining it."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to the topic's peers (they relay it on)."""
        ...

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float) -> bytes:
        """One request, one answer; raises `RequestError` (`RequestTimeout` after
        ``timeout`` seconds) when there is none."""
        ...

    def set_request_handler(
        self, protocol_id: str, handler: RequestHandler, *, max_request_bytes: int | None = None
    ) -> None:
        """Serve ``protocol_id`` with ``handler(request, peer) -> answer``."""
        ...
