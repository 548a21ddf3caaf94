"""Commit bundles: the commit topic carries signed Commits in bundles, the commits of the
encoder identities of one process gathered into one gossip message (docs/PROTOCOL.md §5,
"Commit bundles").

A gossip message costs every keeper a delivery in full (stream read, Noise, the mesh
forward to each peer, the IHAVE gossip after), whatever it carries: at 100 encoders x 7
validators the commit phase cost a validator ~3 ms per commit, 40x the commit's own verify
(docs/BENCHMARKS.md, scale ladder). A process running 24 identities now publishes one bundle
of 24 commits. Each commit keeps its own signature and is admitted on its own (node/ingest.py);
the bundle is framing, not signed.

A bundle is relayed when it carried at least one commit new to the relaying node and nothing
invalid: a peer cannot make a keeper relay old commits again without a new valid one, and one
bad commit makes the whole bundle a reject (an honest process bundles only its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgpack
import trio

from dlnet.node import counters as C
from dlnet.node.gather import Gathering
from dlnet.node.ingest import Ingest
from dlnet.node.sync import unpack_bounded
from dlnet.node.transport import Transport, Verdict
from dlnet.protocol.wire import Kind, topic

BUNDLE_ITEMS: Final = 64
"""Most commits in one bundle."""
BUNDLE_BYTES: Final = 48 * 1024
"""Most bytes of commits a bundle is made of (gossip refuses messages over 64 KiB)."""
COMMIT_GATHER: Final = 0.1
"""A `CommitGroup` gathers its identities' commits this long (they commit at the same instant)."""


def bundles(items: Sequence[bytes]) -> list[list[bytes]]:
    """``items`` (encoded Commits) cut, in order, into bundles of at most BUNDLE_ITEMS items
    and BUNDLE_BYTES bytes of commits (a commit alone over it is a bundle of one)."""
    out: list[list[bytes]] = []
    size = 0
    for item in items:
        if not out or len(out[-1]) >= BUNDLE_ITEMS or size + len(item) > BUNDLE_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item)
    return out


def bundle_body(items: Sequence[bytes]) -> bytes:
    """The gossip payload of a bundle: the msgpack array of its encoded Commits."""
    return bytes(msgpack.packb(list(items), use_bin_type=True))


def gossip_payload(kind: Kind, data: bytes) -> bytes:
    """What goes on ``kind``'s topic for the encoded message ``data``: a commit as a bundle
    of one, anything else as it is."""
    return bundle_body([data]) if kind is Kind.COMMIT else data


def parse_bundle(data: bytes) -> list[bytes] | None:
    """The encoded Commits of a bundle; None unless it is an array of 1 to BUNDLE_ITEMS
    distinct byte strings."""
    items = unpack_bounded(data)
    if (
        not isinstance(items, list)
        or not 1 <= len(items) <= BUNDLE_ITEMS
        or not all(type(i) is bytes for i in items)
        or len(set(items)) != len(items)
    ):
        return None
    return items


async def check_bundle(ingest: Ingest, data: bytes) -> Verdict:
    """The commit topic's validator: every commit of the bundle checked as a gossiped commit
    (`Ingest.check_async`, registration proofs off the event loop, all at once). REJECT if
    the bundle is malformed (``rejected:malformed_bundle``) or any commit is invalid; else
    ACCEPT if any commit was new and in its window (relayed), else IGNORE. Nothing of a
    rejected bundle is kept, not even its valid commits: a peer could otherwise send honest
    commits ahead of their own bundle, wrapped with a forged one, and so stop this node from
    relaying them (held, the honest bundle would bring nothing new). They arrive in a valid
    bundle or by a pull."""
    items = parse_bundle(data)
    if items is None:
        ingest.count(C.REJECTED, "malformed_bundle")
        return Verdict.REJECT
    verdicts: list[Verdict] = [Verdict.IGNORE] * len(items)

    async def one(i: int) -> None:
        verdicts[i] = await ingest.check_async(Kind.COMMIT, items[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(items)):
            nursery.start_soon(one, i)
    if Verdict.REJECT in verdicts:
        for item, verdict in zip(items, verdicts, strict=True):
            if verdict is Verdict.ACCEPT:
                ingest.discard_checked(item)
        return Verdict.REJECT
    return Verdict.ACCEPT if Verdict.ACCEPT in verdicts else Verdict.IGNORE


def admit_bundle(ingest: Ingest, items: list[bytes]) -> None:
    """The drain-task half: the commits of an accepted bundle that `check_bundle` found new
    stored (`Ingest.admit_judged`), all in one transaction; the others were counted there."""
    with ingest.store.batch():
        for item in items:
            ingest.admit_judged(item)


class CommitGroup:
    """The commits of the encoder identities of one process, published together
    (`gather.Gathering`): the commits published within COMMIT_GATHER of the first go out as
    one bundle (as many as `bundles` makes). Each identity stores its own commit first
    (`NodeContext.hold_own`)."""

    def __init__(self, host: Transport, network_id: bytes) -> None:
        self.host = host
        self.topic = topic(network_id, Kind.COMMIT)
        self._gathering: Gathering[bytes, None] = Gathering(COMMIT_GATHER, self._send, None)

    async def publish(self, data: bytes) -> None:
        """Gossip the encoded Commit ``data`` with the others gathered meanwhile."""
        await self._gathering.ask(data)

    async def _send(self, items: list[bytes]) -> list[None]:
        for part in bundles(items):
            await self.host.publish(self.topic, bundle_body(part))
        return [None] * len(items)
