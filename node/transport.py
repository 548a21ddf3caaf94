"""What a node's roles, sync and reveal push need of the network, as one interface.

`dlnet.node.host.Host` implements it over py-libp2p (gossipsub topics, request/response
streams, peer upkeep); tests implement it in memory, to run whole networks of roles in one
process under trio's mock clock. Roles never reach past it into libp2p."""

from __future__ import annotations

from typing import Protocol

from dlnet.node.host import MessageHandler, RequestHandler, Validator


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

    async def subscribe(self, topic: str, validator: Validator, handler: MessageHandler) -> None:
        """Join ``topic``: ``validator`` judges each message before it is relayed; accepted
        messages from other peers reach ``handler`` one at a time, in arrival order."""
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
