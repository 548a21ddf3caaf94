"""A hostile peer for end-to-end tests and scripts/chaos.py: joins a running network over
127.0.0.1 and misbehaves in one of three modes; every honest node must survive it.

    python tests/hostile_peer.py --config genesis.json --bootstrap /ip4/.../p2p/<id>
        [--mode gossip|poison-sync|flood-sync] [--seconds S]

``--config``     the network's genesis config (JSON), ``--bootstrap`` a full multiaddr of a node;
``--seconds``    how long to stay (gossip: longest wait for a subscribed peer; default 60).

Modes (each prints one JSON line when done):

* ``gossip`` (default): publishes, on every topic, bytes every node must reject and count.
  Prints {"sent": n, "reasons": [reject reasons the network must have counted]}.
* ``poison-sync``: serves the sync protocol and answers every request with poison: msgpack
  nested 500 deep, a validly signed commit for round 2**63 and one for the current round + 50
  (fresh key). A node must store none of them, count them and charge this peer.
  Prints {"served": n}.
* ``flood-sync``: sends sync requests to the bootstrap node as fast as it can (malformed ones
  and valid ones alternately, 16 at a time) for ``--seconds``, or until STOP_AFTER_REFUSALS in
  a row failed (banned). The node must rate-limit and ban it.
  Prints {"sent": n, "answered": a, "failed": f}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

from dlnet.node.commits import bundle_body
from dlnet.node.host import Host, open_host
from dlnet.node.sync import protocol_id
from dlnet.node.transport import GossipParams, RequestError
from dlnet.protocol.config import NetworkConfig, parse_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import round_at
from dlnet.protocol.wire import (
    Kind,
    encode,
    make_embedding,
    sign_attestation,
    sign_commit,
    sign_vote,
    topic,
)


def _replace_field(data: bytes, old: Any, new: Any) -> bytes:
    fields = msgpack.unpackb(data, raw=False)
    i = fields.index(old)
    fields[i] = new
    return bytes(msgpack.packb(fields, use_bin_type=True))


def hostile_messages(cfg: NetworkConfig, rnd: int) -> list[tuple[Kind, bytes, str]]:
    """(topic kind, bytes, the reject reason they must earn)."""
    key = SigningKey.generate()
    net = cfg.network_id
    vec = np.ones(cfg.dim, dtype=np.float32)
    emb = encode(make_embedding(key, net, rnd, 0, 0, os.urandom(16), vec))
    n_hashes = cfg.shards_per_round * cfg.slots_per_shard
    commit = encode(sign_commit(key, net, rnd, tuple(os.urandom(32) for _ in range(n_hashes))))
    vote = encode(sign_vote(key, net, rnd, os.urandom(32)))
    att = encode(sign_attestation(key, net, rnd, (), b"", b"", os.urandom(32)))
    nan = np.full(cfg.dim, np.nan, dtype=np.float32).tobytes()
    out: list[tuple[Kind, bytes, str]] = []
    for kind in (Kind.EMBEDDING, Kind.ATTESTATION, Kind.VOTE):
        out.append((kind, b"not msgpack at all", "malformed"))
        out.append((kind, b"\xc1", "malformed"))
    # The commit topic carries bundles of commits (node/commits.py): anything else is refused
    # whole; a bundle is judged by each of its commits.
    out += [
        (Kind.COMMIT, b"not msgpack at all", "malformed_bundle"),
        (Kind.COMMIT, commit, "malformed_bundle"),
        (Kind.COMMIT, bundle_body([commit[: len(commit) // 2]]), "malformed"),
        (Kind.COMMIT, bundle_body([commit[:-1] + bytes([commit[-1] ^ 1])]), "bad_signature"),
        (Kind.EMBEDDING, emb[:-1] + bytes([emb[-1] ^ 1]), "bad_signature"),
        (Kind.EMBEDDING, _replace_field(emb, vec.tobytes(), nan), "non_finite"),
        (Kind.EMBEDDING, _replace_field(emb, vec.tobytes(), vec.tobytes()[:-4]), "wrong_dimension"),
        (Kind.EMBEDDING, _replace_field(emb, net, os.urandom(32)), "wrong_network"),
        (Kind.COMMIT, bundle_body([_replace_field(commit, net, os.urandom(32))]), "wrong_network"),
        (Kind.ATTESTATION, att, "not_validator"),
        (Kind.VOTE, vote, "not_validator"),
    ]
    return out


async def main(cfg: NetworkConfig, bootstrap: str, seconds: float) -> dict[str, Any]:
    params = GossipParams()
    async with open_host(
        listen="/ip4/127.0.0.1/tcp/0",
        bootstrap=[bootstrap],
        params=params,
        network_tag=cfg.network_id.hex()[:16],
    ) as host:
        commit_topic = topic(cfg.network_id, Kind.COMMIT)
        with trio.move_on_after(seconds):
            while not host.topic_peers(commit_topic):
                await trio.sleep(0.2)
        rnd = max(0, round_at(cfg, time.time()))
        msgs = hostile_messages(cfg, rnd)
        for kind, data, _ in msgs:
            await host.publish(topic(cfg.network_id, kind), data)
        await trio.sleep(2.0)
        return {"sent": len(msgs), "reasons": sorted({r for _, _, r in msgs})}


def poison_items(cfg: NetworkConfig, rnd: int) -> list[bytes]:
    """Sync-answer items that must each be rejected: deep msgpack, round 2**63, round + 50."""
    key = SigningKey.generate()
    n = cfg.shards_per_round * cfg.slots_per_shard
    hashes = tuple(os.urandom(32) for _ in range(n))
    return [
        b"\x91" * 500 + b"\xc0",
        encode(sign_commit(key, cfg.network_id, 2**63, hashes)),
        encode(sign_commit(key, cfg.network_id, rnd + 50, hashes)),
    ]


def _joined(cfg: NetworkConfig, bootstrap: str, params: GossipParams) -> Any:
    return open_host(
        listen="/ip4/127.0.0.1/tcp/0",
        bootstrap=[bootstrap],
        params=params,
        network_tag=cfg.network_id.hex()[:16],
    )


async def poison_sync(cfg: NetworkConfig, bootstrap: str, seconds: float) -> dict[str, Any]:
    served = 0
    async with _joined(cfg, bootstrap, GossipParams()) as host:

        async def handler(data: bytes, peer: str) -> bytes:
            nonlocal served
            served += 1
            rnd = max(0, round_at(cfg, time.time()))
            return bytes(msgpack.packb(poison_items(cfg, rnd), use_bin_type=True))

        host.set_request_handler(protocol_id(cfg.network_id), handler)
        await trio.sleep(seconds)
    return {"served": served}


STOP_AFTER_REFUSALS = 200
"""The flooder stops early once this many requests in a row failed: it is banned."""


async def flood_sync(cfg: NetworkConfig, bootstrap: str, seconds: float) -> dict[str, Any]:
    target = bootstrap.rpartition("/p2p/")[2]
    pid = protocol_id(cfg.network_id)
    requests = [b"\xc1", bytes(msgpack.packb(["round", 1, 0], use_bin_type=True))]
    stats = {"sent": 0, "answered": 0, "failed": 0}
    refused_in_a_row = 0

    async def worker(host: Host, done: trio.CancelScope) -> None:
        nonlocal refused_in_a_row
        while True:
            stats["sent"] += 1
            try:
                await host.request(target, pid, requests[stats["sent"] % 2], 2.0)
                stats["answered"] += 1
                refused_in_a_row = 0
            except (RequestError, ValueError):
                stats["failed"] += 1
                refused_in_a_row += 1
                if refused_in_a_row >= STOP_AFTER_REFUSALS:
                    done.cancel()
                await trio.sleep(0.01)

    async with _joined(cfg, bootstrap, GossipParams()) as host:
        with trio.move_on_after(seconds) as done:
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(worker, host, done)
    return stats


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--mode", choices=["gossip", "poison-sync", "flood-sync"], default="gossip")
    args = ap.parse_args()
    network = parse_config(args.config.read_text())
    run = {"gossip": main, "poison-sync": poison_sync, "flood-sync": flood_sync}[args.mode]
    print(json.dumps(trio.run(run, network, args.bootstrap, args.seconds)))
