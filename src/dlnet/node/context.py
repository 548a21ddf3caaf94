"""What every role of a running node shares: config, data, store, host and clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import trio

from dlnet.node import counters as C
from dlnet.node.commits import gossip_payload
from dlnet.node.ingest import Ingest, slot_of
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.transport import Transport
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.wire import Kind, Message, encode, message_id, topic

T = TypeVar("T")


class Clock(Protocol):
    """A node's time: round deadlines are wall-clock seconds from genesis. Roles read time
    and wait only through their context's clock, so that a test can run them in trio's
    virtual time (`TrioClock` under `trio.testing.MockClock`)."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class WallClock:
    """The clock of a running node: ``time.time()``."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await trio.sleep(delay)


WALL: Final = WallClock()


@dataclass(frozen=True)
class TrioClock:
    """Wall time read off trio's clock: ``epoch + trio.current_time()``. Under a
    ``MockClock(autojump_threshold=0)`` a round's deadlines pass as soon as every task
    waits, so whole rounds of in-process nodes run in a blink."""

    epoch: float

    def now(self) -> float:
        return self.epoch + trio.current_time()

    async def sleep_until(self, t: float) -> None:
        await trio.sleep_until(t - self.epoch)


@dataclass
class NodeContext:
    cfg: NetworkConfig
    items: tuple[str, ...]
    store: Store
    ingest: Ingest
    host: Transport
    sync: SyncClient
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dlnet"))
    halted: str | None = None
    """Why this node must not sign any more (its key is live elsewhere); None = may sign."""
    clock: Clock = WALL
    threads: bool = True
    """Whether CPU-heavy work (scoring, embedding) runs on a worker thread: False in tests under
    a mock clock, where a thread's time would read as idle and jump the clock past deadlines."""

    async def offload(self, work: Callable[[], T]) -> T:
        """Run ``work`` (pure: it touches no store or host) off the trio thread."""
        if not self.threads:
            return work()
        return await trio.to_thread.run_sync(work)

    async def publish(self, kind: Kind, msg: Message) -> bytes | None:
        """Record the signature (slashing protection), store the message, then gossip it.
        Returns its bytes, or None when it was refused: the node is halted, or it signed
        another message for the same (kind, round, shard, slot) before (counted as
        ``refused:conflicting_signature``)."""
        data = self.hold_own(kind, msg)
        if data is not None:
            await self.host.publish(topic(self.cfg.network_id, kind), gossip_payload(kind, data))
        return data

    def hold_own(
        self, kind: Kind, msg: Message, data: bytes | None = None, commitment: bytes | None = None
    ) -> bytes | None:
        """Record the signature (slashing protection) and store a message this node made,
        without publishing it yet (an encoder's reveals until the commit deadline); ``data``
        and an Embedding's ``commitment`` when the caller has them. Returns its bytes, or None
        when refused (see :meth:`publish`)."""
        data = encode(msg) if data is None else data
        if self.halted is not None:
            self.ingest.count(C.REFUSED, "halted")
            return None
        where = slot_of(msg, commitment)
        earlier = self.store.record_signing(
            where.signer, int(kind), where.round, where.shard, where.slot, message_id(data)
        )
        if earlier is not None:
            self.ingest.count(C.REFUSED, "conflicting_signature")
            self.log.warning(
                "refused to sign a second %s for round %d (shard %s, slot %s): this key "
                "signed message %s there already",
                kind.name.lower(),
                where.round,
                where.shard,
                where.slot,
                earlier.hex()[:16],
            )
            return None
        self.ingest.admit_own(msg, data, where.commitment)
        return data

    async def republish(self, kind: Kind, msg: Message) -> None:
        """Gossip again a message this node made and stored earlier (after a restart)."""
        await self.host.publish(topic(self.cfg.network_id, kind), gossip_payload(kind, encode(msg)))
