"""One dlnet transport host as an OS process, driven by JSON lines (for the network tests).

stdin commands:  {"cmd": "publish", "topic": t, "prefix": p, "count": n}
                 {"cmd": "status"}   {"cmd": "exit"}
stdout events:   {"ev": "ready", "peer_id", "addrs"}   {"ev": "msg", "topic", "data", "from"}
                 {"ev": "published", "prefix", "count"}
                 {"ev": "status", "peers", "mesh", "topic_peers", "counters"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import trio

from dlnet.node.host import Host, open_host
from dlnet.node.transport import GossipParams, ValidatorResult, Verdict


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def command_loop(host: Host, topics: list[str]) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    while True:
        chunk = await stdin.receive_some(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            if cmd["cmd"] == "exit":
                return
            if cmd["cmd"] == "status":
                emit(
                    {
                        "ev": "status",
                        "peer_id": host.peer_id,
                        "peers": host.connected_peers(),
                        "mesh": {t: host.mesh_peers(t) for t in topics},
                        "topic_peers": {t: host.topic_peers(t) for t in topics},
                        "counters": dict(host.counters),
                    }
                )
            elif cmd["cmd"] == "publish":
                for i in range(cmd["count"]):
                    await host.publish(cmd["topic"], f"{cmd['prefix']}{i}".encode())
                emit({"ev": "published", "prefix": cmd["prefix"], "count": cmd["count"]})


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--handler-delay", type=float, default=0.0)
    ap.add_argument("--reject-prefix", default="")
    ap.add_argument("--params", default="{}", help="JSON object of GossipParams overrides")
    ap.add_argument("--identity-seed", default="", help="hex, 32 bytes: a fixed libp2p key")
    args = ap.parse_args()
    topics = args.topic or ["t"]
    params = GossipParams(**json.loads(args.params))

    def validator(topic: str, data: bytes, peer: str) -> ValidatorResult:
        if args.reject_prefix and data.startswith(args.reject_prefix.encode()):
            return (Verdict.REJECT, "bad_prefix")
        return Verdict.ACCEPT

    seed = bytes.fromhex(args.identity_seed) if args.identity_seed else None
    async with open_host(
        listen=args.listen, bootstrap=args.bootstrap, params=params, identity_seed=seed
    ) as host:
        for topic in topics:

            async def handler(data: bytes, peer: str, topic: str = topic) -> None:
                if args.handler_delay:
                    await trio.sleep(args.handler_delay)
                emit({"ev": "msg", "topic": topic, "data": data.decode(), "from": peer})

            await host.subscribe(topic, validator, handler)
        emit({"ev": "ready", "peer_id": host.peer_id, "addrs": host.addrs})
        await command_loop(host, topics)


if __name__ == "__main__":
    trio.run(main)
