"""Benchmark one testnet-sized gossip burst: real OS processes on 127.0.0.1 (dlnet.node.host).

Node 0 is the bootstrap, nodes 1..V are validators, the rest are encoders. After the mesh
has settled, every encoder publishes 1 commit (256 B, topic ``commit``) and
``--messages-per-node`` reveals (~4.3 KB, topic ``reveal``), paced by ``publish_rate``, all
starting within ``--start-spread`` seconds of the burst start. Reported per round:

* the fraction of the burst each validator received by gossip alone within 5/10/20 s;
* CPU seconds of all node processes over the burst window (psutil, user + system), gross and
  net of the idle rate measured just before, per published message and per node-delivery;
* every host counter that reports a drop, backpressure or ban.

Topology A: every node subscribes to both topics (everyone relays). Topology B: only the
bootstrap and validators subscribe; encoders publish without subscribing (gossipsub fanout
to at most D connected subscribers, so an encoder with no subscriber among its connections
reaches nobody).

The raw floor (Ed25519 sign/verify with ``cryptography``, msgpack pack/unpack of a 4.3 KB
message) is measured in the same run. Every child process is stopped by PID on exit,
error or timeout; children also exit when their stdin closes.

    python scripts/bench_gossip.py --nodes 20 --validators 3 --messages-per-node 20 \\
        --topology A --bootstrap-max-peers 4 --publish-rate 5 --rounds 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgpack
import psutil
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

REVEAL_BYTES = 4300
COMMIT_BYTES = 256
SIG_BYTES = 64
KEY_BYTES = 32
CHILD = "_child"
WINDOWS = (5.0, 10.0, 20.0)
TOPICS = ("commit", "reveal")
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


# ----- child: one host per OS process ----------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _make_message(header: str, size: int, key: Ed25519PrivateKey | None) -> bytes:
    """``header|`` + random padding, optionally ``|| pubkey || signature`` (like dlnet
    messages, which carry their sender key and an Ed25519 signature)."""
    head = header.encode() + b"|"
    tail = KEY_BYTES + SIG_BYTES if key is not None else 0
    body = head + os.urandom(max(size - len(head) - tail, 0))
    if key is None:
        return body
    return body + key.public_key().public_bytes_raw() + key.sign(body)


def _check_signature(data: bytes) -> bool:
    body, pub, sig = (
        data[: -KEY_BYTES - SIG_BYTES],
        data[-KEY_BYTES - SIG_BYTES : -SIG_BYTES],
        data[-SIG_BYTES:],
    )
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, body)
    except (InvalidSignature, ValueError):
        return False
    return True


async def _child_main(args: argparse.Namespace) -> None:
    import trio

    from dlnet.node.host import Host, open_host
    from dlnet.node.transport import GossipParams, ValidatorResult, Verdict

    params = GossipParams(**json.loads(args.params))
    key = Ed25519PrivateKey.generate() if args.verify else None
    received: dict[str, float] = {}

    def validator(topic: str, data: bytes, peer: str) -> ValidatorResult:
        if key is not None and not _check_signature(data):
            return (Verdict.REJECT, "signature")
        return Verdict.ACCEPT

    async def burst(host: Host, cmd: dict[str, Any]) -> None:
        await trio.sleep(max(cmd["at"] - time.time(), 0.0))
        prefix = f"{cmd['round']}:{args.index}"
        await host.publish("commit", _make_message(f"{prefix}:c", COMMIT_BYTES, key))
        for k in range(cmd["count"]):
            await host.publish("reveal", _make_message(f"{prefix}:{k}", REVEAL_BYTES, key))
        _emit({"ev": "published", "round": cmd["round"], "done": time.time()})

    async def commands(host: Host, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return  # the driver is gone
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                if cmd["cmd"] == "exit":
                    return
                if cmd["cmd"] == "burst":
                    nursery.start_soon(burst, host, cmd)
                elif cmd["cmd"] == "status":
                    _emit(
                        {
                            "ev": "status",
                            "peers": len(host.connected_peers()),
                            "mesh": {t: len(host.mesh_peers(t)) for t in TOPICS},
                            "topic_peers": {t: len(host.topic_peers(t)) for t in TOPICS},
                            "counters": dict(host.counters),
                        }
                    )
                elif cmd["cmd"] == "report":
                    _emit({"ev": "report", "received": received})

    with trio.move_on_after(args.max_life):
        async with open_host(listen=LOOPBACK, bootstrap=args.bootstrap, params=params) as host:
            if args.subscribe:
                for topic in TOPICS:

                    async def handler(data: bytes, peer: str) -> None:
                        received[data.split(b"|", 1)[0].decode()] = time.time()

                    await host.subscribe(topic, validator, handler)
            _emit({"ev": "ready", "addrs": host.addrs, "peer_id": host.peer_id})
            async with trio.open_nursery() as nursery:
                await commands(host, nursery)
                nursery.cancel_scope.cancel()


def child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_gossip.py _child")
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--bootstrap", action="append", default=[])
    ap.add_argument("--subscribe", action="store_true")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--params", default="{}")
    ap.add_argument("--max-life", type=float, default=300.0)
    import trio

    trio.run(_child_main, ap.parse_args(argv))


# ----- driver ----------------------------------------------------------------------------


class Node:
    """One child process and a thread that turns its stdout lines into events."""

    def __init__(self, index: int, role: str, argv: list[str], log: IO[bytes]) -> None:
        self.index = index
        self.role = role
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.addrs: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def wait_event(self, ev: str, timeout: float) -> dict[str, Any]:
        end = time.time() + timeout
        while True:
            left = end - time.time()
            if left <= 0 or (self.proc.poll() is not None and self.events.empty()):
                raise RuntimeError(f"node {self.index} ({self.role}): no {ev!r} event")
            with contextlib.suppress(queue.Empty):
                event = self.events.get(timeout=min(left, 0.5))
                if event["ev"] == ev:
                    return event

    def ask(self, cmd: str, ev: str, timeout: float = 10.0) -> dict[str, Any]:
        self.send({"cmd": cmd})
        return self.wait_event(ev, timeout)

    def cpu(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stop(self) -> None:
        """Ask to exit, then SIGKILL this child by its PID if it is still running."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "exit"})
            try:
                self.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def raw_floor(seconds: float = 0.3) -> dict[str, float]:
    """Microseconds per Ed25519 sign and verify, and per msgpack pack and unpack of a
    4.3 KB message (a dict with a 4 KB bytes field, like a reveal)."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    body = os.urandom(REVEAL_BYTES - 200)
    sig = key.sign(body)
    msg = {"round": 7, "encoder": os.urandom(32), "shard": 3, "slot": 2, "emb": body, "sig": sig}
    packed: bytes = msgpack.packb(msg, use_bin_type=True)

    def rate(fn: Any) -> float:
        """Best of 3 timings: the previous run's processes may still be exiting."""
        best = math.inf
        for _ in range(3):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for _ in range(100):
                    fn()
                n += 100
            best = min(best, (time.perf_counter() - start) / n * 1e6)
        return best

    return {
        "ed25519_sign_us": rate(lambda: key.sign(body)),
        "ed25519_verify_us": rate(lambda: pub.verify(sig, body)),
        "msgpack_pack_us": rate(lambda: msgpack.packb(msg, use_bin_type=True)),
        "msgpack_unpack_us": rate(lambda: msgpack.unpackb(packed, raw=False)),
        "message_bytes": float(len(packed)),
    }


def _params_json(args: argparse.Namespace, role: str) -> str:
    params: dict[str, Any] = {"publish_rate": args.publish_rate}
    if role == "bootstrap":
        params["max_peers"] = args.bootstrap_max_peers
    elif role == "validator" and args.validator_max_peers:
        params["max_peers"] = args.validator_max_peers
    return json.dumps(params)


def start_nodes(args: argparse.Namespace, logdir: Path, nodes: list[Node]) -> None:
    script = str(Path(__file__).resolve())
    roles = ["bootstrap"] + ["validator"] * args.validators
    roles += ["encoder"] * (args.nodes - 1 - args.validators)
    bootstrap: list[str] = []
    validator_addrs: list[str] = []
    for index, role in enumerate(roles):
        argv = [sys.executable, script, CHILD, "--index", str(index)]
        argv += ["--params", _params_json(args, role), "--max-life", str(args.timeout + 30)]
        known = bootstrap + (validator_addrs if role == "encoder" else [])
        argv += [f"--bootstrap={a}" for a in known]
        if args.topology == "A" or role != "encoder":
            argv.append("--subscribe")
        if args.verify:
            argv.append("--verify")
        log = open(logdir / f"node{index}.log", "wb")  # noqa: SIM115 - the child owns it
        nodes.append(Node(index, role, argv, log))
        if index == 0:
            ready = nodes[0].wait_event("ready", 60.0)
            bootstrap = [a for a in ready["addrs"] if "/127.0.0.1/" in a][:1]
        if role == "validator" and args.dial_validators:
            ready = nodes[-1].wait_event("ready", 60.0)
            validator_addrs += [a for a in ready["addrs"] if "/127.0.0.1/" in a][:1]
    for node in nodes[1:]:
        if not (node.role == "validator" and args.dial_validators):
            node.wait_event("ready", 90.0)


def _cpu_all(nodes: list[Node]) -> float:
    return sum(n.cpu() for n in nodes)


def run_round(
    args: argparse.Namespace, nodes: list[Node], rnd: int, idle_rate: float
) -> dict[str, Any]:
    encoders = [n for n in nodes if n.role == "encoder"]
    subscribers = [n for n in nodes if args.topology == "A" or n.role != "encoder"]
    per_encoder = 1 + args.messages_per_node
    rng = random.Random(rnd)
    cpu0, t0 = _cpu_all(nodes), time.time() + 0.5
    for enc in encoders:
        enc.send(
            {
                "cmd": "burst",
                "at": t0 + rng.uniform(0.0, args.start_spread),
                "round": rnd,
                "count": args.messages_per_node,
            }
        )
    time.sleep(max(t0 + args.window - time.time(), 0.0))
    cpu1 = _cpu_all(nodes)
    publish_end = max(e.wait_event("published", 30.0)["done"] for e in encoders) - t0
    expected_keys = {
        f"{rnd}:{e.index}:{k}" for e in encoders for k in ["c", *range(per_encoder - 1)]
    }
    windows = [w for w in WINDOWS if w <= args.window]
    fractions: dict[str, list[float]] = {f"{w:g}s": [] for w in windows}
    deliveries = 0
    lat: list[float] = []
    for node in subscribers:
        got = {
            k: t - t0
            for k, t in node.ask("report", "report")["received"].items()
            if k in expected_keys
        }
        # an encoder never receives its own messages
        want = {k for k in expected_keys if k.split(":")[1] != str(node.index)}
        deliveries += len(got)
        if node.role == "validator":
            lat += list(got.values())
            for w in windows:
                fractions[f"{w:g}s"].append(sum(1 for t in got.values() if t <= w) / len(want))
    published = len(expected_keys)
    gross = cpu1 - cpu0
    net = gross - idle_rate * args.window
    return {
        "round": rnd,
        "published": published,
        "publish_end_s": round(publish_end, 2),
        "validator_fraction_min": {w: min(v) for w, v in fractions.items()},
        "validator_fraction_mean": {w: statistics.fmean(v) for w, v in fractions.items()},
        "validator_latency_p50_s": round(statistics.median(lat), 2) if lat else None,
        "validator_latency_max_s": round(max(lat), 2) if lat else None,
        "node_deliveries": deliveries,
        "cpu_gross_s": round(gross, 2),
        "cpu_net_s": round(net, 2),
        "cpu_net_ms_per_published": round(net / published * 1e3, 2),
        "cpu_net_ms_per_delivery": round(net / max(deliveries, 1) * 1e3, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    floor = raw_floor()
    nodes: list[Node] = []
    logdir = Path(tempfile.mkdtemp(prefix="bench_gossip_"))
    t_start = time.time()
    try:
        start_nodes(args, logdir, nodes)
        startup = time.time() - t_start
        time.sleep(args.settle)
        before = [n.ask("status", "status") for n in nodes]
        cpu_a, ta = _cpu_all(nodes), time.time()
        time.sleep(args.idle)
        idle_rate = (_cpu_all(nodes) - cpu_a) / (time.time() - ta)
        rounds = [run_round(args, nodes, r, idle_rate) for r in range(args.rounds)]
        after = [n.ask("status", "status") for n in nodes]
    finally:
        for node in nodes:
            node.stop()
    flagged = ("dropped", "publish.backpressure_timeout", "banned", "rejected", "evicted")
    problems: dict[str, int] = {}
    for status, node in zip(after, nodes, strict=True):
        for name, value in status["counters"].items():
            if name.startswith(flagged) and value:
                label = f"{node.role}:{name}"
                problems[label] = problems.get(label, 0) + value
    verify = floor["ed25519_verify_us"] / 1e3
    for r in rounds:
        r["delivery_cpu_over_verify"] = round(r["cpu_net_ms_per_delivery"] / verify, 1)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "json_out"},
        "raw_floor": {k: round(v, 2) for k, v in floor.items()},
        "startup_s": round(startup, 1),
        "idle_cpu_per_s": round(idle_rate, 3),
        "degree_before": {
            role: sorted(s["peers"] for s, n in zip(before, nodes, strict=True) if n.role == role)
            for role in ("bootstrap", "validator", "encoder")
        },
        "validator_reveal_topic_peers": [
            s["topic_peers"]["reveal"]
            for s, n in zip(before, nodes, strict=True)
            if n.role == "validator"
        ],
        "rounds": rounds,
        "counters_flagged": problems,
        "wall_s": round(time.time() - t_start, 1),
        "logs": str(logdir),
    }


def main() -> None:
    if sys.argv[1:2] == [CHILD]:
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20, help="total processes (1 bootstrap)")
    ap.add_argument("--validators", type=int, default=3)
    ap.add_argument("--messages-per-node", type=int, default=20, help="reveals per encoder")
    ap.add_argument("--topology", choices=("A", "B"), default="A")
    ap.add_argument("--bootstrap-max-peers", type=int, default=4)
    ap.add_argument("--validator-max-peers", type=int, default=0, help="0 = GossipParams")
    ap.add_argument(
        "--dial-validators",
        action="store_true",
        help="encoders also get the validators' addresses as bootstrap addresses",
    )
    ap.add_argument("--publish-rate", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per burst")
    ap.add_argument("--start-spread", type=float, default=1.0, help="encoder start jitter, s")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after startup")
    ap.add_argument("--idle", type=float, default=4.0, help="seconds of idle CPU baseline")
    ap.add_argument("--verify", action="store_true", help="sign messages, verify in validator")
    ap.add_argument("--timeout", type=float, default=180.0, help="hard bound on the whole run")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    if args.nodes < args.validators + 2:
        ap.error("need at least one encoder")

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"benchmark exceeded --timeout {args.timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
    signal.alarm(int(args.timeout))
    result = run(args)
    signal.alarm(0)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
