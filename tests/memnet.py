"""An in-memory network implementing `dlnet.node.transport.Transport`, for running whole
networks of roles in one process under trio's mock clock.

Gossip floods: a message a host accepts is relayed to every linked peer that joined the topic
and has not seen it (duplicates are dropped by message id before validation, as gossipsub
does). Requests call the peer's handler directly. Faults: `MemoryHost.kill` (the node is gone:
it is unlinked and every request to it fails at once) and `MemoryHost.pause` (SIGSTOP: it
stays linked, a request to it times out, gossip to it waits until `resume`), and `cut` /
`join` of single links. Every hop costs ``latency`` seconds of (virtual) time."""

from __future__ import annotations

from collections import Counter

import trio

from dlnet.node.transport import (
    STALL_SKIP,
    AsyncValidator,
    MessageHandler,
    RequestError,
    RequestHandler,
    RequestTimeout,
    Validator,
    Verdict,
)
from dlnet.protocol.wire import message_id


class MemoryNetwork:
    def __init__(self, nursery: trio.Nursery, latency: float = 0.005) -> None:
        self.nursery = nursery
        self.latency = latency
        self.hosts: dict[str, MemoryHost] = {}
        self.cut_links: set[frozenset[str]] = set()

    def host(self, name: str) -> MemoryHost:
        if name in self.hosts and not self.hosts[name].killed:
            raise ValueError(f"{name} is live")
        self.hosts[name] = MemoryHost(self, name)
        return self.hosts[name]

    def linked(self, a: str, b: str) -> bool:
        return a != b and frozenset((a, b)) not in self.cut_links

    def cut(self, a: str, b: str) -> None:
        self.cut_links.add(frozenset((a, b)))

    def join(self, a: str, b: str) -> None:
        self.cut_links.discard(frozenset((a, b)))


class MemoryHost:
    def __init__(self, net: MemoryNetwork, name: str) -> None:
        self.net = net
        self.peer_id = name
        self.killed = False
        self.resumed = trio.Event()
        self.resumed.set()
        self.topics: dict[
            str,
            tuple[Validator, AsyncValidator | None, trio.MemorySendChannel[tuple[bytes, str]]],
        ] = {}
        self.handlers: dict[str, tuple[RequestHandler, int | None]] = {}
        self.seen: set[bytes] = set()
        self.counters: Counter[str] = Counter()
        self.penalties: Counter[str] = Counter()
        self._stalled_until: dict[str, float] = {}

    # --- faults --------------------------------------------------------------------------------
    def kill(self) -> None:
        self.killed = True
        self.resumed.set()

    def pause(self) -> None:
        self.resumed = trio.Event()

    def resume(self) -> None:
        self.resumed.set()

    @property
    def paused(self) -> bool:
        return not self.resumed.is_set()

    # --- Transport -----------------------------------------------------------------------------
    def _peers(self) -> list[MemoryHost]:
        return [
            h
            for name, h in self.net.hosts.items()
            if not h.killed and not self.killed and self.net.linked(self.peer_id, name)
        ]

    def connected_peers(self) -> list[str]:
        return sorted(h.peer_id for h in self._peers())

    def carriers(self, topic: str) -> list[str]:
        return sorted(
            h.peer_id for h in self._peers() if topic in h.topics and not self.stalled(h.peer_id)
        )

    def stalled(self, peer: str) -> bool:
        return self._stalled_until.get(peer, -1.0) > trio.current_time()

    def penalize(self, peer: str, reason: str, points: float = 1.0) -> None:
        self.penalties[reason] += 1

    async def subscribe(
        self,
        topic: str,
        validator: Validator,
        handler: MessageHandler,
        *,
        slow: AsyncValidator | None = None,
    ) -> None:
        send, recv = trio.open_memory_channel[tuple[bytes, str]](float("inf"))
        self.topics[topic] = (validator, slow, send)

        async def dispatch() -> None:
            async for data, peer in recv:
                if self.killed:
                    return
                await self.resumed.wait()
                await handler(data, peer)

        self.net.nursery.start_soon(dispatch)

    def publish_outside(self, topic: str) -> None:
        pass

    async def publish(self, topic: str, data: bytes) -> None:
        await self.resumed.wait()  # a stopped node sends nothing
        if self.killed:
            return
        self.seen.add(message_id(data))
        self.counters["published"] += 1
        self._relay(topic, data)

    def _relay(self, topic: str, data: bytes) -> None:
        for peer in self._peers():
            if topic in peer.topics:
                self.net.nursery.start_soon(peer._receive, topic, data, self.peer_id)

    async def _receive(self, topic: str, data: bytes, sender: str) -> None:
        await trio.sleep(self.net.latency)
        await self.resumed.wait()
        mid = message_id(data)
        if self.killed or mid in self.seen or topic not in self.topics:
            return
        self.seen.add(mid)
        validator, slow, sink = self.topics[topic]
        verdict = (
            validator(topic, data, sender) if slow is None else await slow(topic, data, sender)
        )
        verdict = verdict[0] if isinstance(verdict, tuple) else verdict
        self.counters[f"gossip.{verdict.name.lower()}"] += 1
        if verdict is Verdict.REJECT:
            self.penalize(sender, "rejected")
        if verdict is not Verdict.ACCEPT:
            return
        sink.send_nowait((data, sender))
        self._relay(topic, data)

    async def request(self, peer_id: str, protocol_id: str, data: bytes, timeout: float) -> bytes:
        peer = self.net.hosts.get(peer_id)
        if peer is None or peer.killed or self.killed or not self.net.linked(self.peer_id, peer_id):
            raise RequestError(f"{peer_id} is not connected")
        self.counters["requests.sent"] += 1
        await self.resumed.wait()
        with trio.move_on_after(timeout):
            await trio.sleep(self.net.latency)
            await peer.resumed.wait()
            if peer.killed:
                raise RequestError(f"{peer_id} went away")
            served = peer.handlers.get(protocol_id)
            if served is None:
                raise RequestError(f"{peer_id} does not serve {protocol_id}")
            handler, limit = served
            if limit is not None and len(data) > limit:
                raise RequestError("request too large")
            answer = await handler(data, self.peer_id)
            await trio.sleep(self.net.latency)
            return answer
        self._stalled_until[peer_id] = trio.current_time() + STALL_SKIP
        raise RequestTimeout(f"no answer from {peer_id} on {protocol_id} in {timeout}s")

    def set_request_handler(
        self, protocol_id: str, handler: RequestHandler, *, max_request_bytes: int | None = None
    ) -> None:
        self.handlers[protocol_id] = (handler, max_request_bytes)
