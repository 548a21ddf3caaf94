"""A hostile peer for end-to-end tests: joins a running network over 127.0.0.1 and publishes,
on every topic, bytes that every honest node must reject (and count) without crashing.

Prints one JSON line: {"sent": n, "reasons": [reject reasons the network must have counted]}.
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

from dlnet.node.host import GossipParams, open_host
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
    for kind in (Kind.COMMIT, Kind.EMBEDDING, Kind.ATTESTATION, Kind.VOTE):
        out.append((kind, b"not msgpack at all", "malformed"))
        out.append((kind, b"\xc1", "malformed"))
    out += [
        (Kind.COMMIT, commit[: len(commit) // 2], "malformed"),
        (Kind.EMBEDDING, emb[:-1] + bytes([emb[-1] ^ 1]), "bad_signature"),
        (Kind.EMBEDDING, _replace_field(emb, vec.tobytes(), nan), "non_finite"),
        (Kind.EMBEDDING, _replace_field(emb, vec.tobytes(), vec.tobytes()[:-4]), "wrong_dimension"),
        (Kind.EMBEDDING, _replace_field(emb, net, os.urandom(32)), "wrong_network"),
        (Kind.COMMIT, _replace_field(commit, net, os.urandom(32)), "wrong_network"),
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    network = parse_config(args.config.read_text())
    print(json.dumps(trio.run(main, network, args.bootstrap, args.seconds)))
