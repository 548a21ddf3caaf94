"""Pull repair and catch-up over a libp2p request/response protocol.

Gossip is best-effort, so every node also answers three requests from what it has stored,
and validators use them to fetch what they know they lack:

* ``["commitments", [hash, ...]]`` — reveals by the commitment hash listed in a Commit;
* ``["round", kind, round]`` — every stored message of one kind for one round;
* ``["certificates", first_round, last_round]`` — finalized certificates in a range.

The answer is a msgpack array of raw message bytes. The requester trusts nothing it fetches:
each answer goes through the same strict admission as a gossiped message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
import trio

from dlnet.node.host import Host
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.rounds import round_at, round_times
from dlnet.protocol.wire import Embedding, Kind, Reject, decode

MAX_ITEMS = 256
MAX_REQUEST_BYTES = 64 * 1024
# An answer carries at most this many bytes of messages, well inside the transport's 4 MiB
# frame: a larger answer would be refused whole. A requester asks again for what it still lacks.
MAX_ANSWER_BYTES = 3 * 1024 * 1024
REQUEST_TIMEOUT = 5.0


class BadRequest(ValueError):
    pass


def protocol_id(network_id: bytes) -> str:
    return f"/dlnet/{network_id.hex()[:16]}/sync/1"


def _parse_request(data: bytes) -> tuple[str, list[Any]]:
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest("oversize")
    try:
        req = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest("malformed") from exc
    if not isinstance(req, list) or not req or not isinstance(req[0], str):
        raise BadRequest("malformed")
    return req[0], req[1:]


def _ints(args: Sequence[Any], n: int) -> list[int]:
    if len(args) != n or not all(type(a) is int and a >= 0 for a in args):
        raise BadRequest("malformed")
    return list(args)


def answer(store: Store, cfg: NetworkConfig, now: float, data: bytes) -> bytes:
    """The sync server: lookups in the store; raises BadRequest on anything malformed.

    Reveals of a round are served only once its commit deadline has passed: an encoder
    holds its own reveals from the start of the round, and serving them early would let a
    copier commit to someone else's embeddings.
    """
    op, args = _parse_request(data)
    open_rounds = range(round_at(cfg, now) + 1)
    if now < round_times(cfg, open_rounds.stop - 1).commit_deadline:
        open_rounds = range(open_rounds.stop - 1)
    items: list[bytes]
    if op == "commitments":
        if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > MAX_ITEMS:
            raise BadRequest("malformed")
        hashes = args[0]
        if not all(isinstance(h, bytes) and len(h) == 32 for h in hashes):
            raise BadRequest("malformed")
        found = (store.get_by_commitment(h, rounds=open_rounds) for h in hashes)
        items = [d for d in found if d is not None]
    elif op == "round":
        kind, rnd = _ints(args, 2)
        if kind not in (Kind.COMMIT, Kind.EMBEDDING, Kind.ATTESTATION, Kind.VOTE):
            raise BadRequest("malformed")
        items = (
            [] if kind == Kind.EMBEDDING and rnd not in open_rounds else store.messages(kind, rnd)
        )
    elif op == "certificates":
        lo, hi = _ints(args, 2)
        if hi < lo or hi - lo >= MAX_ITEMS:
            raise BadRequest("malformed")
        items = [d for _, d in store.certificates(lo, hi)]
    else:
        raise BadRequest("unknown_op")
    return bytes(msgpack.packb(_bounded(items), use_bin_type=True))


def _bounded(items: list[bytes]) -> list[bytes]:
    """The longest prefix of ``items`` that fits in MAX_ANSWER_BYTES."""
    total = 0
    for i, item in enumerate(items):
        total += len(item)
        if total > MAX_ANSWER_BYTES:
            return items[:i]
    return items


def _parse_answer(data: bytes) -> list[bytes]:
    try:
        items = msgpack.unpackb(data, raw=False)
    except Exception:
        return []
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, bytes)]


class SyncClient:
    """Asks connected peers, in random order, until what is wanted has arrived."""

    def __init__(self, host: Host, ingest: Ingest, network_id: bytes) -> None:
        self.host = host
        self.ingest = ingest
        self.pid = protocol_id(network_id)

    async def _ask(self, peer: str, request: list[Any]) -> list[bytes]:
        payload = bytes(msgpack.packb(request, use_bin_type=True))
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                return _parse_answer(
                    await self.host.request(peer, self.pid, payload, REQUEST_TIMEOUT)
                )
        except Exception:  # a peer's timeout or broken stream must not take the node down
            self.ingest.count("sync", "request_failed")
            return []

    def _peers(self) -> list[str]:
        peers = list(self.host.connected_peers())
        random.shuffle(peers)
        return peers

    async def fetch_commitments(self, wanted: Iterable[bytes]) -> int:
        """Fetch reveals by commitment hash; returns how many new ones were admitted."""
        missing = set(wanted)
        got = 0
        for peer in self._peers():
            if not missing:
                break
            batch = sorted(missing)[:MAX_ITEMS]
            for data in await self._ask(peer, ["commitments", batch]):
                try:
                    msg = decode(data, self.ingest.cfg, Kind.EMBEDDING)
                except Reject as exc:
                    self.ingest.count("rejected", exc.reason.value)
                    continue
                assert isinstance(msg, Embedding)
                if msg.commitment() not in missing:
                    self.ingest.count("rejected", "unrequested")
                    continue
                if self.ingest.admit(data, Kind.EMBEDDING, window=False) is Outcome.NEW:
                    got += 1
                missing.discard(msg.commitment())
        return got

    async def fetch_round(self, kind: Kind, rnd: int) -> int:
        """Fetch every message of a kind for a round from every connected peer (a node keeps a
        handful: ``max_peers``); returns new admissions."""
        got = 0
        for peer in self._peers():
            for data in await self._ask(peer, ["round", int(kind), rnd]):
                if self.ingest.admit(data, kind, window=False) is Outcome.NEW:
                    got += 1
        return got

    async def fetch_certificates(self, lo: int, hi: int, keep: Callable[[bytes], bool]) -> int:
        """Certificates for rounds lo..hi, from the first peer that sends any that ``keep`` (the
        caller's verification) takes; a peer that sends only junk does not end the search.
        Returns how many were kept."""
        for peer in self._peers():
            kept = sum(keep(data) for data in await self._ask(peer, ["certificates", lo, hi]))
            if kept:
                return kept
        return 0


def install_server(host: Host, store: Store, ingest: Ingest, now: Callable[[], float]) -> None:
    async def handler(data: bytes, peer: str) -> bytes:
        try:
            return answer(store, ingest.cfg, now(), data)
        except BadRequest as exc:
            ingest.count("rejected", f"sync_{exc}")
            return bytes(msgpack.packb([], use_bin_type=True))

    host.set_request_handler(protocol_id(ingest.cfg.network_id), handler)
