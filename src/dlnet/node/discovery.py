"""Peer exchange (PX): wire format and the bookkeeping that keeps each node's degree bounded.

The libp2p host only gives a star around the bootstrap node. Every node therefore asks its
peers for the addresses they know (a PX request/response over the host's framed stream
protocol), dials until it has ``target_peers`` connections, and closes connections beyond
``max_peers``. This module holds the pure parts: the PX body codec and :class:`PeerTable`,
which decides whom to dial and whom to evict. The I/O lives in ``node/host.py``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

PX_MAX_ADDRS = 16
"""At most this many addresses travel in one PX body."""
PX_MAX_ADDR_BYTES = 256
"""Longest accepted multiaddr string (UTF-8 bytes)."""
_HEADER = struct.Struct(">BBH")  # degree (capped at 255), flags, address count


@dataclass(frozen=True)
class PeerExchange:
    """One PX body: the sender's connection count, whether it is over its bound, addresses.

    In a request ``addrs`` are the requester's own listen addresses; in a response they
    are addresses of other peers the responder knows. Every address ends in ``/p2p/<id>``.
    """

    degree: int
    full: bool
    addrs: tuple[str, ...]


def encode_px(px: PeerExchange) -> bytes:
    """``u8 min(degree,255) || u8 flags (bit 0 = full) || u16be n || n x (u16be len || utf-8)``."""
    addrs = px.addrs[:PX_MAX_ADDRS]
    out = bytearray(_HEADER.pack(min(max(px.degree, 0), 255), 1 if px.full else 0, len(addrs)))
    for addr in addrs:
        raw = addr.encode()
        if len(raw) > PX_MAX_ADDR_BYTES:
            raise ValueError(f"address longer than {PX_MAX_ADDR_BYTES} bytes: {addr[:40]}...")
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


def decode_px(data: bytes) -> PeerExchange:
    """Strict inverse of :func:`encode_px`; raises ``ValueError`` on any deviation."""
    if len(data) < _HEADER.size:
        raise ValueError("px body shorter than its header")
    degree, flags, count = _HEADER.unpack_from(data)
    if flags & ~1:
        raise ValueError(f"px flags has unknown bits: {flags:#x}")
    if count > PX_MAX_ADDRS:
        raise ValueError(f"px body lists {count} addresses, more than {PX_MAX_ADDRS}")
    pos = _HEADER.size
    addrs: list[str] = []
    for _ in range(count):
        if pos + 2 > len(data):
            raise ValueError("px address length truncated")
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if n > PX_MAX_ADDR_BYTES or pos + n > len(data):
            raise ValueError("px address truncated or too long")
        addr = data[pos : pos + n].decode()  # UnicodeDecodeError is a ValueError
        pos += n
        if peer_id_of(addr) is None:
            raise ValueError(f"px address has no /p2p/ peer id: {addr[:60]}")
        addrs.append(addr)
    if pos != len(data):
        raise ValueError("px body has trailing bytes")
    return PeerExchange(degree=degree, full=bool(flags & 1), addrs=tuple(addrs))


def peer_id_of(addr: str) -> str | None:
    """The peer id in the trailing ``/p2p/<id>`` of a multiaddr string, else ``None``."""
    head, sep, peer_id = addr.rpartition("/p2p/")
    if not sep or not head or not peer_id or "/" in peer_id:
        return None
    return peer_id


@dataclass
class PeerTable:
    """What a node knows about other peers; all times are ``trio.current_time()`` seconds."""

    self_id: str
    addrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    degree: dict[str, int] = field(default_factory=dict)
    backoff_until: dict[str, float] = field(default_factory=dict)
    connected_since: dict[str, float] = field(default_factory=dict)
    carried: dict[str, set[str]] = field(default_factory=dict)
    """Topic -> peers seen joined to it while connected (dialled first when it runs thin)."""
    met: set[str] = field(default_factory=set)
    """Every peer this node was ever connected to."""

    def learn(self, addr: str) -> str | None:
        """Record a dialable address; returns its peer id (``None`` if unusable or ours)."""
        peer_id = peer_id_of(addr)
        if peer_id is None or peer_id == self.self_id:
            return None
        known = self.addrs.get(peer_id, ())
        if addr not in known:
            self.addrs[peer_id] = (addr, *known)[:4]
        return peer_id

    def back_off(self, peer_id: str, until: float) -> None:
        self.backoff_until[peer_id] = max(until, self.backoff_until.get(peer_id, 0.0))

    def note_connected(self, connected: set[str], now: float) -> None:
        """Remember when each current connection was first seen; forget closed ones."""
        self.met |= connected
        for peer_id in connected:
            self.connected_since.setdefault(peer_id, now)
        for peer_id in set(self.connected_since) - connected:
            del self.connected_since[peer_id]

    def dial_candidates(self, connected: set[str], now: float, rng: random.Random) -> list[str]:
        """Known, unconnected peers not backed off; low reported degree first, ties random."""
        ids = [
            p
            for p in self.addrs
            if p not in connected and self.backoff_until.get(p, 0.0) <= now and p != self.self_id
        ]
        rng.shuffle(ids)
        return sorted(ids, key=lambda p: self.degree.get(p, 0))

    def note_carriers(self, carriers: Mapping[str, Collection[str]]) -> None:
        """Remember which connected peers joined which topic (``carriers``: topic -> peers)."""
        for topic, peers in carriers.items():
            self.carried.setdefault(topic, set()).update(peers)

    def outlet_candidates(
        self, thin: Collection[str], connected: set[str], now: float, rng: random.Random
    ) -> list[str]:
        """Whom to dial for the ``thin`` topics (fewer connected carriers than wanted): of
        `dial_candidates`, the peers seen carrying one of them first, then peers never
        connected to (one may carry it: trying is how a node finds out); a peer met before
        that carried none of them is not tried again for them."""
        candidates = self.dial_candidates(connected, now, rng)
        seen = set().union(*(self.carried.get(t, set()) for t in thin))
        return [p for p in candidates if p in seen] + [
            p for p in candidates if p not in seen and p not in self.met
        ]

    def eviction_victims(
        self,
        connected: set[str],
        max_peers: int,
        now: float,
        grace: float,
        carriers: Mapping[str, Collection[str]] | None = None,
        floor: int = 0,
        first: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Connections to close so that at most ``max_peers`` remain.

        Only connections older than ``grace`` are closed (a newcomer first gets its PX
        answer). The peer with the highest reported degree goes first (it stays best
        connected without us); unknown degree counts as 255 (a peer that never spoke PX);
        ties close the newest connection first. A peer is passed over when closing it would
        leave a topic in ``carriers`` (topic -> connected peers that joined it) with fewer
        than ``floor`` carriers: the best-connected peer, first to go otherwise, is typically
        the relay that carries a topic this node publishes into without joining. That
        protection is bounded by ``floor``, so ``max_peers`` still holds wherever a topic has
        more carriers than that. Peers in ``first`` (those that read nothing) go before all
        others.
        """
        excess = len(connected) - max_peers
        if excess <= 0:
            return []
        settled = [p for p in connected if now - self.connected_since.get(p, now) >= grace]
        settled.sort(
            key=lambda p: (
                p not in first,
                -self.degree.get(p, 255),
                -self.connected_since.get(p, now),
            )
        )
        left = {t: set(peers) & connected for t, peers in (carriers or {}).items()}
        victims: list[str] = []
        for peer in settled:
            if len(victims) == excess:
                break
            if any(peer in peers and len(peers) <= floor for peers in left.values()):
                continue
            victims.append(peer)
            for peers in left.values():
                peers.discard(peer)
        return victims

    def sample_for(self, requester: str, connected: set[str], rng: random.Random) -> list[str]:
        """Addresses to hand a requester: our connected peers first, then others we know."""
        first = [p for p in connected if p != requester and p in self.addrs]
        rest = [p for p in self.addrs if p not in connected and p != requester]
        rng.shuffle(first)
        rng.shuffle(rest)
        return [self.addrs[p][0] for p in (first + rest)[:PX_MAX_ADDRS]]
