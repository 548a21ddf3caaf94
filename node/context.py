"""What every role of a running node shares: config, data, store, host and clock."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio

from dlnet.node import counters as C
from dlnet.node.host import Host
from dlnet.node.ingest import Ingest, slot_of
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.wire import Kind, Message, encode, message_id, topic


def wall_clock() -> float:
    return time.time()


async def sleep_until(t: float) -> None:
    """Sleep until wall-clock time t (round deadlines are wall-clock times from genesis)."""
    delay = t - wall_clock()
    if delay > 0:
        await trio.sleep(delay)


@dataclass
class NodeContext:
    cfg: NetworkConfig
    items: tuple[str, ...]
    store: Store
    ingest: Ingest
    host: Host
    sync: SyncClient
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("dlnet"))
    halted: str | None = None
    """Why this node must not sign any more (its key is live elsewhere); None = may sign."""

    async def publish(self, kind: Kind, msg: Message) -> bytes | None:
        """Record the signature (slashing protection), store the message, then gossip it.
        Returns its bytes, or None when it was refused: the node is halted, or it signed
        another message for the same (kind, round, shard, slot) before (counted as
        ``refused:conflicting_signature``)."""
        data = self.hold_own(kind, msg)
        if data is not None:
            await self.host.publish(topic(self.cfg.network_id, kind), data)
        return data

    def hold_own(self, kind: Kind, msg: Message) -> bytes | None:
        """Record the signature (slashing protection) and store a message this node made,
        without publishing it yet (an encoder's reveals until the commit deadline). Returns
        its bytes, or None when refused (see :meth:`publish`)."""
        data = encode(msg)
        if self.halted is not None:
            self.ingest.count(C.REFUSED, "halted")
            return None
        where = slot_of(msg)
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
        self.ingest.admit_own(msg, data)
        return data

    async def republish(self, kind: Kind, msg: Message) -> None:
        """Gossip again a message this node made and stored earlier (after a restart)."""
        await self.host.publish(topic(self.cfg.network_id, kind), encode(msg))
