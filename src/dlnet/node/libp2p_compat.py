"""Every override of py-libp2p internals dlnet relies on, in one place, checked against the
library version they were written for (an ImportError names the version to install).

* no signed peer records are built, sent or verified (`no_sender_record`,
  `ignore_sender_record`), and no libp2p message
  signing: dlnet's Ed25519 signature covers every message, the message id is its content hash
  (`content_id`);
* gossipsub counts its silent drops (spam limit, full outbound queues) and forgets a peer's
  (origin, seqno) entries when it connects or disconnects (`CountingGossipSub`);
* pubsub hands accepted messages to an unbounded channel instead of a 32-slot queue and does
  not run our own validators on our own publishes (`DeliveringPubsub`);
* the swarm's connection manager is neutralised: peer exchange alone manages connections
  (`connection_config`);
* yamux releases receive credit in batches, not on every read (`batch_window_updates`);
* closing a peer's connections leaves a connection it opened meanwhile in the swarm's table
  (`keep_new_connections_on_close`), and a gossip stream left on a closed connection is
  noticed (`gossip_stream_closed`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
import types
from collections.abc import Callable
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.swarm_connection import SwarmConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from dlnet.node import counters as C
from dlnet.node.counters import Counters
from dlnet.protocol.wire import message_id


# The swarm's own connection manager would fight the degree bound: its auto-connector dials
# peerstore peers up to (low + high watermark) / 2 and its pruner trims above the high
# watermark. Watermarks 0 make the dial target 0; an effectively infinite grace period
# keeps the pruner from closing anything. Peer exchange alone manages connections.
def connection_config() -> ConnectionConfig:
    return ConnectionConfig(min_connections=0, low_watermark=0, high_watermark=0, grace_period=1e12)


YAMUX_RELEASE_ON_READ = "PY_YAMUX_RELEASE_ON_READ"
"""py-libp2p's switch (read at every stream read) for sending a WINDOW_UPDATE per read."""


def batch_window_updates() -> None:
    """py-libp2p 0.8.1's yamux, by default, gives back receive credit after every read of a
    stream: one WINDOW_UPDATE frame, so one Noise encryption and one send() syscall, per read.
    Profiled at 100 encoders x 7 validators (docs/BENCHMARKS.md), those updates were a fifth
    of the bootstrap's CPU and 7 % of a validator's. This switch turns off the library's
    release of credit for every byte read (its go-yamux mode: credit goes back in batches of
    half the window); its "partial slack" branch still sends an update on a read while the
    window is below its target, so the bootstrap's share fell from 22 % to 17 %, not to zero.
    A stream read to its end never blocks its writer either way (tests/test_node_host.py moves
    2 MiB requests). An operator's own setting of the variable wins."""
    os.environ.setdefault(YAMUX_RELEASE_ON_READ, "0")


async def _close_peer(swarm: Swarm, peer_id: ID) -> None:
    """`Swarm.close_peer` without its last line. py-libp2p 0.8.1 closes each of the peer's
    connections (each close awaits, 0.1 s at least, and removes that connection from the
    table) and then pops the peer's whole entry: a connection the peer opened during those
    awaits (it dialled straight back) was dropped from the table while left open. Neither
    side then ever closed it; the other side kept publishing into it, and its gossip stream
    (on the old connection) stayed dead (tests/test_node_topics.py, a publisher cut from its
    carrier). Here only the connections that were closed leave the table."""
    for connection in swarm.get_connections(peer_id):
        try:
            swarm.cleanup_connection_health(peer_id, connection)
            await connection.close()
        except Exception as exc:  # as the library does: a close that fails is logged
            logging.getLogger(__name__).warning("closing a connection to %s: %r", peer_id, exc)
        if isinstance(connection, SwarmConn) and connection in swarm.get_connections(peer_id):
            swarm.remove_conn(connection)  # its close did not get that far


def keep_new_connections_on_close(swarm: Swarm) -> None:
    """Install `_close_peer` as ``swarm``'s ``close_peer`` (what ``host.disconnect`` calls)."""
    swarm.close_peer = types.MethodType(_close_peer, swarm)  # type: ignore[method-assign]


def gossip_stream_closed(pubsub: Pubsub, peer_id: ID) -> bool:
    """Whether pubsub's stream to ``peer_id`` runs on a connection that has closed. When a
    peer's connection closes and a new one opens at about the same moment (a request dials
    straight back), py-libp2p 0.8.1's pubsub can keep the old stream and open none on the new
    connection: the peer then looks subscribed while nothing reaches it either way."""
    stream = pubsub.peers.get(peer_id)
    muxed = getattr(stream, "muxed_conn", None)
    return bool(getattr(muxed, "is_closed", False))


LIBP2P_VERSION = "0.8.1"
"""The py-libp2p version the overrides below were written against (checked at import)."""

if importlib.metadata.version("libp2p") != LIBP2P_VERSION:  # pragma: no cover
    raise ImportError(
        f"dlnet.node.libp2p_compat overrides py-libp2p {LIBP2P_VERSION} internals; "
        f"libp2p {importlib.metadata.version('libp2p')} is installed — pip install "
        f"libp2p=={LIBP2P_VERSION}"
    )


def ignore_sender_record(msg: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
    """dlnet sends no signed peer records and verifies none it receives: py-libp2p 0.8.1
    otherwise checks the Ed25519 envelope of every RPC that carries one, before anything else
    (PROTOCOL.md §6 Gossipsub, "libp2p message signing"). The peer is authenticated by the
    Noise handshake; every dlnet message by dlnet's own signature."""
    return True


# py-libp2p calls it by these module-level names (pubsub's read loop, gossipsub's handle_rpc).
_pubsub_module.maybe_consume_signed_record = ignore_sender_record  # type: ignore[attr-defined]

_gossipsub_module.maybe_consume_signed_record = ignore_sender_record  # type: ignore[attr-defined]


def no_sender_record(host: IHost) -> tuple[bytes, bool]:
    """What py-libp2p 0.8.1 would put in an RPC's ``senderRecord``: nothing. Its own
    `env_to_send_in_RPC` rebuilt the host's address set (multiaddr parsing) for every RPC it
    sent, and `DeliveringPubsub.write_msg` then cleared the field: 6-8 % of a validator's CPU
    while commits arrive at 100 encoders (docs/BENCHMARKS.md)."""
    return b"", False


# The pubsub and gossipsub modules call it by these module-level names.
_pubsub_module.env_to_send_in_RPC = no_sender_record  # type: ignore[attr-defined]
_gossipsub_module.env_to_send_in_RPC = no_sender_record  # type: ignore[attr-defined]


class CountingGossipSub(GossipSub):
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


class DeliveringPubsub(Pubsub):
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


def content_id(msg: rpc_pb2.Message) -> bytes:
    """gossipsub's message id: dlnet's own `message_id`, the content hash (docs/PROTOCOL.md §1)."""
    return message_id(msg.data)


def start_seqnos_fresh(pubsub: Pubsub) -> None:
    """py-libp2p starts seqnos at ``int(time.time())`` and counts one per publish, so a node
    restarted with the same key soon after publishing k messages reuses the last k seqnos,
    and gossipsub's (origin, seqno) equivocation check at every peer then drops its new
    messages. Nanoseconds (as go-libp2p) stay ahead of any earlier run of this key unless it
    published more than 1e9 messages a second."""
    pubsub.counter = time.time_ns()
