"""What every role of a running node shares: config, data, store, host and clock."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import trio

from dlnet.node.host import Host
from dlnet.node.ingest import Ingest
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.wire import Kind, Message, encode, topic


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

    async def publish(self, kind: Kind, msg: Message) -> bytes:
        """Store a message this node made, then gossip it. Returns its bytes."""
        data = encode(msg)
        self.ingest.admit_own(msg, data)
        await self.host.publish(topic(self.cfg.network_id, kind), data)
        return data

    async def republish(self, kind: Kind, msg: Message) -> None:
        """Gossip again a message this node made and stored earlier (after a restart)."""
        await self.host.publish(topic(self.cfg.network_id, kind), encode(msg))
