"""node/host.py over real TCP on 127.0.0.1: framing and request/response in process, and
each py-libp2p 0.8.1 pitfall (FINDINGS) with one OS process per host (tests/host_peer.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from dlnet.node.discovery import PX_MAX_ADDRS, PeerExchange, PeerTable, decode_px, encode_px
from dlnet.node.host import STALL_AFTER, open_host
from dlnet.node.libp2p_compat import YAMUX_RELEASE_ON_READ, batch_window_updates
from dlnet.node.transport import GossipParams, RequestError, RequestTimeout, Verdict

HOST_PEER = Path(__file__).with_name("host_peer.py")
LOOPBACK = "/ip4/127.0.0.1/tcp/0"


# ----- pure parts -------------------------------------------------------------------------

peer_ids = st.text(
    "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=1, max_size=52
)


@given(
    st.integers(0, 255),
    st.booleans(),
    st.lists(st.tuples(st.integers(1, 65535), peer_ids), max_size=PX_MAX_ADDRS),
)
def test_px_roundtrip(degree: int, full: bool, addrs: list[tuple[int, str]]) -> None:
    px = PeerExchange(degree, full, tuple(f"/ip4/127.0.0.1/tcp/{p}/p2p/{i}" for p, i in addrs))
    assert decode_px(encode_px(px)) == px


@given(st.binary(max_size=64))
def test_px_decode_rejects_garbage_with_value_error(data: bytes) -> None:
    try:
        px = decode_px(data)
    except ValueError:
        return
    assert encode_px(px) == data  # whatever decodes is canonical


def test_px_decode_rejects_trailing_bytes_and_bare_addresses() -> None:
    good = encode_px(PeerExchange(1, False, ("/ip4/1.2.3.4/tcp/1/p2p/Qm1",)))
    with pytest.raises(ValueError, match="trailing"):
        decode_px(good + b"\x00")
    bare = encode_px(PeerExchange(1, False, ("/ip4/1.2.3.4/tcp/1",)))
    with pytest.raises(ValueError, match="peer id"):
        decode_px(bare)


def test_eviction_prefers_best_connected_settled_peers() -> None:
    table = PeerTable("me")
    table.note_connected({"a", "b", "c"}, now=0.0)
    table.note_connected({"a", "b", "c", "new"}, now=10.0)
    table.degree.update({"a": 4, "b": 2, "c": 3, "new": 1})
    assert table.eviction_victims({"a", "b", "c", "new"}, 4, now=10.0, grace=3.0) == []
    assert table.eviction_victims({"a", "b", "c", "new"}, 2, now=10.0, grace=3.0) == ["a", "c"]
    # once the newcomer has settled it can be chosen, but its low degree keeps it last
    assert table.eviction_victims({"a", "b", "c", "new"}, 1, now=20.0, grace=3.0) == ["a", "c", "b"]


def test_params_reject_pacing_above_spam_limit() -> None:
    with pytest.raises(ValueError, match="spam_limit"):
        GossipParams(spam_limit=10.0, publish_rate=8.0, publish_burst=5)
    GossipParams(spam_limit=10.0, publish_rate=8.0, publish_burst=1)


# ----- request / response, in process, real TCP ---------------------------------------------


async def _wait_connected(a_id: str, peers: Callable[[], list[str]]) -> None:
    with trio.fail_after(10):
        while a_id not in peers():
            await trio.sleep(0.05)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_megabyte_requests_flow_with_batched_window_credit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host gives yamux receive credit back in batches of half the window, not per read
    (libp2p_compat.batch_window_updates); requests and answers eight times the window, four
    at once, still flow both ways: credit comes back while the reader reads."""
    monkeypatch.delenv(YAMUX_RELEASE_ON_READ, raising=False)
    params = GossipParams(request_timeout=20.0)

    async def main() -> None:
        async def serve(data: bytes, peer: str) -> bytes:
            return data[::-1]

        async with open_host(listen=LOOPBACK, bootstrap=[], params=params) as a:
            a.set_request_handler("/test/echo/1", serve)
            async with open_host(listen=LOOPBACK, bootstrap=a.addrs, params=params) as b:
                await _wait_connected(a.peer_id, b.connected_peers)
                bodies = [os.urandom(2 * 1024 * 1024) for _ in range(4)]
                answers: list[bytes] = [b""] * 4

                async def ask(i: int) -> None:
                    answers[i] = await b.request(a.peer_id, "/test/echo/1", bodies[i], 20)

                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        for i in range(4):
                            nursery.start_soon(ask, i)
                assert answers == [body[::-1] for body in bodies]

    trio.run(main)
    assert os.environ[YAMUX_RELEASE_ON_READ] == "0"


def test_an_operators_yamux_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(YAMUX_RELEASE_ON_READ, "1")
    batch_window_updates()
    assert os.environ[YAMUX_RELEASE_ON_READ] == "1"
    monkeypatch.delenv(YAMUX_RELEASE_ON_READ)
    batch_window_updates()
    assert os.environ[YAMUX_RELEASE_ON_READ] == "0"


@pytest.mark.network
@pytest.mark.timeout(60)
def test_request_response_frames_errors_bounds_and_shutdown() -> None:
    params = GossipParams(max_frame_bytes=1024, max_message_bytes=512, request_timeout=2.0)

    async def main() -> None:
        async def serve(data: bytes, peer: str) -> bytes:
            if data == b"fail":
                raise RequestError("no such round")
            if data == b"crash":
                raise RuntimeError("bug")
            if data == b"slow":
                await trio.sleep(5)
            if data == b"big":
                return b"x" * 2000
            return data[::-1] + peer.encode()

        async with open_host(listen=LOOPBACK, bootstrap=[], params=params) as a:
            a.set_request_handler("/test/echo/1", serve)
            async with open_host(listen=LOOPBACK, bootstrap=a.addrs, params=params) as b:
                await _wait_connected(a.peer_id, b.connected_peers)
                assert await b.request(a.peer_id, "/test/echo/1", b"abc", 5) == (
                    b"cba" + b.peer_id.encode()
                )
                with pytest.raises(RequestError, match="no such round"):
                    await b.request(a.peer_id, "/test/echo/1", b"fail", 5)
                with pytest.raises(RequestError, match="internal error"):
                    await b.request(a.peer_id, "/test/echo/1", b"crash", 5)
                with pytest.raises(RequestError, match="exceeds max_frame_bytes"):
                    await b.request(a.peer_id, "/test/echo/1", b"big", 5)
                with pytest.raises(RequestTimeout):
                    await b.request(a.peer_id, "/test/echo/1", b"slow", 0.5)
                with pytest.raises(RequestError):
                    await b.request(a.peer_id, "/test/unknown/1", b"abc", 5)
                with pytest.raises(ValueError):
                    await b.request(a.peer_id, "/test/echo/1", b"y" * 2000, 5)
                with pytest.raises(ValueError):
                    await b.publish("t", b"z" * 600)
                # the host is still healthy after all of that
                assert await b.request(a.peer_id, "/test/echo/1", b"ok", 5) == (
                    b"ko" + b.peer_id.encode()
                )
            assert a.counters["requests.answered_error"] >= 3
            assert a.counters["dropped"] == 0

    threads_before = set(threading.enumerate())
    trio.run(main)  # returns only once every task of both hosts has finished
    assert set(threading.enumerate()) <= threads_before  # and they started no threads


@pytest.mark.network
@pytest.mark.timeout(60)
def test_network_tag_separates_networks() -> None:
    """A peer of another network does not speak our PX protocol: it is disconnected."""
    params = GossipParams(discovery_interval=0.3)

    async def main() -> None:
        async with (
            open_host(listen=LOOPBACK, bootstrap=[], params=params, network_tag="aa") as a,
            open_host(listen=LOOPBACK, bootstrap=a.addrs, params=params, network_tag="bb") as b,
        ):
            with trio.fail_after(10):
                while b.counters.get("px.failed", 0) == 0:
                    await trio.sleep(0.1)
                while a.peer_id in b.connected_peers():
                    await trio.sleep(0.1)

    trio.run(main)


# ----- OS processes -------------------------------------------------------------------------


class Peer:
    """A tests/host_peer.py process; its JSON events are collected by a reader thread."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HOST_PEER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        # a bound, not a speed: a Python process importing libp2p beside a testnet on 2 busy
        # cores took over 20 s to start
        ready = self.wait(lambda e: e["ev"] == "ready", 60)
        self.peer_id: str = ready["peer_id"]
        self.addr: str = ready["addrs"][0]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        with self.cond:
            found: list[dict[str, Any]] = []

            def hit() -> bool:
                found[:] = [e for e in self.events if pred(e)]
                return bool(found)

            assert self.cond.wait_for(hit, timeout), f"event not seen; log: {self.log.name}"
            return found[-1]

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def status(self) -> dict[str, Any]:
        with self.cond:
            seen = sum(e["ev"] == "status" for e in self.events)
        self.send({"cmd": "status"})
        with self.cond:
            assert self.cond.wait_for(
                lambda: sum(e["ev"] == "status" for e in self.events) > seen, 10
            )
            return [e for e in self.events if e["ev"] == "status"][-1]

    def publish(self, prefix: str, count: int, topic: str = "t", timeout: float = 60) -> None:
        self.send({"cmd": "publish", "topic": topic, "prefix": prefix, "count": count})
        self.wait(lambda e: e["ev"] == "published" and e["prefix"] == prefix, timeout)

    def received(self, prefix: str = "") -> list[str]:
        with self.cond:
            return [
                e["data"] for e in self.events if e["ev"] == "msg" and e["data"].startswith(prefix)
            ]

    def wait_received(self, prefix: str, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received(prefix)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.received(prefix)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill9(self) -> None:
        self.proc.kill()  # SIGKILL to this pid
        self.proc.wait()
        self.log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def start(*args: str) -> Peer:
        peer = Peer(tmp_path / f"peer{len(peers)}.log", *args)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


def params(**overrides: Any) -> str:
    return json.dumps(overrides)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def meshed(*peers: Peer, min_mesh: int = 1) -> Callable[[], bool]:
    return lambda: all(len(p.status()["mesh"]["t"]) >= min_mesh for p in peers)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_spam_limit_pacing_and_validator_on_a_line(spawn: Callable[..., Peer]) -> None:
    """Pitfalls 1 and 8. A - B - C with the library's spam limit (10 msg/s per forwarder)
    on and pacing at 8 msg/s: all 40 reach C through B. B's validator rejects "bad" ones:
    not relayed to C, counted by reason; A's own validator (same rule) does not stop
    A's publish, and A's handler never sees its own messages."""
    # D_low 1: one carrier of the topic is enough, so C does not dial A for a second one.
    p = params(
        spam_limit=10.0,
        publish_rate=8.0,
        publish_burst=1,
        target_peers=1,
        max_peers=2,
        degree_low=1,
    )
    a = spawn("--params", p, "--reject-prefix", "bad")
    b = spawn("--params", p, "--reject-prefix", "bad", "--bootstrap", a.addr)
    c = spawn("--params", p, "--bootstrap", b.addr)
    wait_until(meshed(a, c), 20, "mesh")
    wait_until(lambda: len(b.status()["mesh"]["t"]) == 2, 20, "B meshed with A and C")
    assert a.peer_id not in c.status()["peers"]  # a line: everything C gets, B relayed

    a.publish("bad", 5)
    a.publish("good", 40)
    assert sorted(c.wait_received("good", 40, 20)) == sorted(f"good{i}" for i in range(40))
    assert b.wait_received("good", 40, 10) == [f"good{i}" for i in range(40)]  # in order
    time.sleep(1.0)
    assert c.received("bad") == [] and b.received("bad") == [] and a.received() == []
    sb, sc = b.status()["counters"], c.status()["counters"]
    assert sb["rejected.bad_prefix"] == 5
    for counters in (a.status()["counters"], sb, sc):
        assert counters["dropped"] == 0, sorted(counters.items())


@pytest.mark.network
@pytest.mark.timeout(60)
def test_burst_of_200_reaches_a_slow_and_a_fast_subscriber(spawn: Callable[..., Peer]) -> None:
    """Pitfalls 3 and 4: 200 publishes back to back (outbound queues of 32) reach a
    subscriber whose handler takes 20 ms per message (subscription queue of 32): 100%,
    each message handed to the subscriber once."""
    p = params(publish_rate=100.0, publish_burst=10)
    a = spawn("--params", p)
    slow = spawn("--params", p, "--bootstrap", a.addr, "--handler-delay", "0.02")
    fast = spawn("--params", p, "--bootstrap", a.addr)
    wait_until(lambda: len(a.status()["mesh"]["t"]) == 2, 20, "publisher meshed")
    a.publish("m", 200)
    expected = sorted(f"m{i}" for i in range(200))
    # Each subscriber also hears the burst relayed by the other, so the order in which
    # the two paths interleave is the network's; what must hold is every message, once.
    assert sorted(fast.wait_received("m", 200, 20)) == expected
    assert sorted(slow.wait_received("m", 200, 30)) == expected
    time.sleep(1.0)
    assert sorted(fast.received("m")) == expected and sorted(slow.received("m")) == expected
    for peer in (a, slow, fast):
        assert peer.status()["counters"]["dropped"] == 0


@pytest.mark.network
@pytest.mark.timeout(150)
def test_six_nodes_discover_beyond_the_star_with_bounded_degree(
    spawn: Callable[..., Peer],
) -> None:
    """Pitfalls 2 and 5: six processes on 127.0.0.1 (one IP: eclipse protection would
    starve the mesh) bootstrap to one node; peer exchange gives every node a peer other
    than the bootstrap, at most max_peers=4 connections, one connected graph, and a
    message crosses it to everyone."""
    boot = spawn()
    others = [spawn("--bootstrap", boot.addr) for _ in range(5)]
    nodes = [boot, *others]

    def settled() -> bool:
        st = {p.peer_id: set(p.status()["peers"]) for p in nodes}
        if any(not 2 <= len(v) <= 4 for v in st.values()):
            return False
        if any(not st[p.peer_id] - {boot.peer_id} for p in others):
            return False
        reach, todo = {boot.peer_id}, [boot.peer_id]
        while todo:
            for q in st[todo.pop()] - reach:
                reach.add(q)
                todo.append(q)
        return len(reach) == len(nodes)

    wait_until(settled, 40, "a connected mesh with bounded degree")
    wait_until(meshed(*nodes), 15, "gossip meshes")
    others[-1].publish("hop", 10)
    for p in nodes[:-1]:
        assert sorted(p.wait_received("hop", 10, 15)) == sorted(f"hop{i}" for i in range(10))
    # The bound is kept by eviction at each upkeep tick: a peer's dial can make a fifth
    # connection for a moment (seen once beside a testnet), which the next tick closes.
    wait_until(
        lambda: all(len(p.status()["peers"]) <= 4 for p in nodes), 10, "at most 4 peers each"
    )
    for p in nodes:
        assert p.status()["counters"]["dropped"] == 0


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_peer_that_lets_a_request_time_out_is_no_carrier_for_a_while(
    spawn: Callable[..., Peer],
) -> None:
    """A stopped peer with nothing queued towards it (no stuck gossip queue to show it): a
    request it leaves unanswered for STALL_AFTER marks it stalled, so it stops counting as a
    carrier of its topics and peer upkeep looks for another."""
    peer = spawn()

    async def main() -> None:
        async def ignore(data: bytes, sender: str) -> None:
            pass

        async with open_host(listen=LOOPBACK, bootstrap=[peer.addr], params=GossipParams()) as a:
            await a.subscribe("t", lambda t, d, p: Verdict.ACCEPT, ignore)
            await _wait_connected(peer.peer_id, a.connected_peers)
            with trio.fail_after(15):
                while peer.peer_id not in a.carriers("t"):
                    await trio.sleep(0.1)
            os.kill(peer.proc.pid, signal.SIGSTOP)
            try:
                assert not a.stalled(peer.peer_id)
                with pytest.raises(RequestTimeout):
                    await a.request(peer.peer_id, "/test/echo/1", b"hi", STALL_AFTER + 0.1)
                assert a.stalled(peer.peer_id)
                assert peer.peer_id in a.topic_peers("t")
                assert peer.peer_id not in a.carriers("t")
            finally:
                os.kill(peer.proc.pid, signal.SIGCONT)

    trio.run(main)


@pytest.mark.network
@pytest.mark.timeout(150)
def test_kill9_and_restart_receives_again(spawn: Callable[..., Peer]) -> None:
    """Pitfall 6: a peer killed with SIGKILL and restarted (fresh libp2p key by default)
    receives and is received again: 20/20 both ways."""
    a = spawn()
    b = spawn("--bootstrap", a.addr)
    wait_until(meshed(a, b), 20, "mesh")
    a.publish("before", 5)
    assert len(b.wait_received("before", 5, 10)) == 5
    b.kill9()
    b2 = spawn("--bootstrap", a.addr)
    assert b2.peer_id != b.peer_id
    wait_until(lambda: a.status()["mesh"]["t"] == [b2.peer_id], 20, "mesh with the restarted peer")
    wait_until(meshed(b2), 10, "restarted peer meshed")
    a.publish("after", 20)
    b2.publish("back", 20)
    assert sorted(b2.wait_received("after", 20, 15)) == sorted(f"after{i}" for i in range(20))
    assert sorted(a.wait_received("back", 20, 15)) == sorted(f"back{i}" for i in range(20))
    assert a.status()["counters"]["dropped"] == 0


@pytest.mark.network
@pytest.mark.timeout(150)
def test_kill9_and_restart_with_the_same_peer_key_receives_again(
    spawn: Callable[..., Peer],
) -> None:
    """A peer killed with SIGKILL and restarted with the SAME libp2p key (a persistent
    peer.key) is received, relayed and receives again. With py-libp2p's defaults its new
    messages reused seqnos of its earlier run and the survivor's (origin, seqno)
    equivocation check dropped all 20 of them from relaying (dropped.equivocation = 20)."""
    seed = "11" * 32
    a = spawn()
    b = spawn("--bootstrap", a.addr, "--identity-seed", seed)
    wait_until(meshed(a, b), 20, "mesh")
    a.publish("before", 5)
    # 60 publishes move b's seqno counter ~60 ahead of the clock: a restart within a minute
    # reused those seqnos with py-libp2p's defaults.
    b.publish("early", 60)
    assert len(b.wait_received("before", 5, 10)) == 5
    assert len(a.wait_received("early", 60, 30)) == 60
    b.kill9()
    b2 = spawn("--bootstrap", a.addr, "--identity-seed", seed)
    assert b2.peer_id == b.peer_id
    wait_until(lambda: a.status()["mesh"]["t"] == [b2.peer_id], 20, "mesh with the restarted peer")
    wait_until(meshed(b2), 10, "restarted peer meshed")
    a.publish("after", 20)
    b2.publish("back", 20)
    assert len(set(b2.wait_received("after", 20, 15))) >= 19
    assert len(set(a.wait_received("back", 20, 15))) >= 19
    counters = a.status()["counters"]
    assert counters["dropped"] == 0, sorted(counters.items())


@pytest.mark.network
@pytest.mark.timeout(120)
def test_a_request_to_a_peer_that_reads_nothing_returns_on_time_and_the_peer_is_severed(
    spawn: Callable[..., Peer],
) -> None:
    """A SIGSTOPped peer that we keep gossiping to: py-libp2p resets a timed-out stream in a
    shielded scope that waits for that connection's writes, so before the fix one request
    hung as long as the peer was stopped (a validator's round task with it). Now each call
    returns at its timeout, the stuck peer is skipped, then severed, and shutdown is prompt."""
    peer = spawn()
    gossip = GossipParams(publish_rate=100.0, publish_burst=100)

    async def main() -> None:
        async def ignore(data: bytes, sender: str) -> None:
            pass

        async with open_host(listen=LOOPBACK, bootstrap=[peer.addr], params=gossip) as a:
            await a.subscribe("t", lambda t, d, p: Verdict.ACCEPT, ignore)
            await _wait_connected(peer.peer_id, a.connected_peers)
            with trio.fail_after(15):
                while peer.peer_id not in a.topic_peers("t"):
                    await trio.sleep(0.1)
            os.kill(peer.proc.pid, signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:

                    async def flood() -> None:
                        while True:
                            await a.publish("t", os.urandom(4096))
                            await trio.sleep(0.02)

                    nursery.start_soon(flood)
                    for _ in range(12):
                        with trio.fail_after(5):  # each ask is bounded by its 1 s timeout
                            with pytest.raises(RequestError):
                                await a.request(peer.peer_id, "/test/echo/1", b"hi", 1.0)
                        if a.counters.get("peers.wedged_severed", 0):
                            break
                        await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()
                assert a.counters.get("requests.skipped_wedged", 0) >= 1
                assert a.counters.get("peers.wedged_severed", 0) >= 1
                with trio.fail_after(10):
                    while peer.peer_id in a.connected_peers():
                        await trio.sleep(0.1)
            finally:
                os.kill(peer.proc.pid, signal.SIGCONT)

    trio.run(main)  # returns: the host shut down although a stream was wedged


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_stuck_outbound_queue_delays_one_publish_not_every_one() -> None:
    """A queue over half full through a whole backpressure wait is a peer that reads nothing:
    the next publishes do not wait for it again (a stopped validator held every attestation
    back 5 s); once it drains below half it counts again."""
    gossip = GossipParams(backpressure_timeout=0.3, publish_rate=100.0, publish_burst=100)

    class Queue:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

    async def main() -> None:
        async with open_host(listen=LOOPBACK, bootstrap=[], params=gossip) as a:
            stuck = Queue(30)
            other = ID.from_pubkey(create_new_key_pair().public_key)
            a._pubsub.peer_queues[other] = stuck  # type: ignore[assignment]
            for i in range(5):
                await a.publish("t", b"m%d" % i)
            assert a.counters["publish.backpressure_timeout"] == 1
            stuck.n = 0  # it drained: a later fill is waited for again
            await a.publish("t", b"drained")
            stuck.n = 30
            await a.publish("t", b"again")
            assert a.counters["publish.backpressure_timeout"] == 2

    trio.run(main)


@pytest.mark.network
@pytest.mark.timeout(60)
def test_no_libp2p_signing_and_a_forged_origin_is_judged_by_the_dlnet_signature() -> None:
    """PROTOCOL.md §6: py-libp2p neither signs messages nor sends or verifies signed peer
    records; two hosts still exchange messages, and a message whose libp2p ``from`` is
    forged (no libp2p signature) is accepted or rejected by dlnet's own signature alone."""
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.pubsub.pb import rpc_pb2

    from dlnet.protocol.canonical import sha256
    from dlnet.protocol.config import ValidatorEntry, default_config
    from dlnet.protocol.identity import SigningKey
    from dlnet.protocol.wire import Kind, Reject, decode, encode, make_embedding

    key = SigningKey.from_seed(sha256(b"encoder"))
    cfg = default_config(
        [ValidatorEntry(sha256(b"v"), 1)], 1_700_000_000, dataset_sha256=sha256(b"d"), dim=8
    )
    good = encode(make_embedding(key, cfg.network_id, 1, 0, 0, bytes(16), [1.0] * 8))
    tampered = good[:-70] + bytes([good[-70] ^ 1]) + good[-69:]
    records: list[bool] = []
    read_loop = pubsub_module.maybe_consume_signed_record

    def spy(msg: rpc_pb2.RPC, host: Any, peer_id: ID) -> bool:
        records.append(msg.HasField("senderRecord"))
        return read_loop(msg, host, peer_id)

    def dlnet_verdict(_topic: str, data: bytes, _peer: str) -> Verdict:
        try:
            decode(data, cfg, Kind.EMBEDDING)
        except Reject:
            return Verdict.REJECT
        return Verdict.ACCEPT

    async def main() -> None:
        got: list[bytes] = []

        async def handler(data: bytes, peer: str) -> None:
            got.append(data)

        params = GossipParams()
        pubsub_module.maybe_consume_signed_record = spy  # type: ignore[attr-defined]
        try:
            async with (
                open_host(listen=LOOPBACK, bootstrap=[], params=params) as a,
                open_host(listen=LOOPBACK, bootstrap=a.addrs, params=params) as b,
            ):
                for h in (a, b):
                    await h.subscribe("t", dlnet_verdict, handler)
                with trio.fail_after(15):
                    while a.peer_id not in b.mesh_peers("t") or b.peer_id not in a.mesh_peers("t"):
                        await trio.sleep(0.1)
                assert not a._pubsub.strict_signing and a._pubsub.sign_key is None
                # Nor is a peer record built per RPC (py-libp2p's own rebuilt the address set
                # of the host for every RPC it sent).
                addr_reads = 0
                get_addrs = a._lp.get_addrs

                def counted_addrs() -> Any:
                    nonlocal addr_reads
                    addr_reads += 1
                    return get_addrs()

                a._lp.get_addrs = counted_addrs  # type: ignore[method-assign]
                await a.publish("t", good)
                with trio.fail_after(10):
                    while good not in got:
                        await trio.sleep(0.05)
                # The same message id twice is one delivery (content hash).
                # Forged origins, no libp2p signature: only the dlnet signature decides.
                stranger = ID.from_pubkey(create_new_key_pair().public_key).to_bytes()
                for n, data in enumerate((tampered, good + b"")):
                    forged = rpc_pb2.Message(
                        from_id=stranger, data=data, seqno=n.to_bytes(8, "big"), topicIDs=["t"]
                    )
                    await b._pubsub.push_msg(ID.from_base58(a.peer_id), forged)
                other = encode(make_embedding(key, cfg.network_id, 1, 0, 1, bytes(16), [2.0] * 8))
                forged = rpc_pb2.Message(
                    from_id=stranger, data=other, seqno=(9).to_bytes(8, "big"), topicIDs=["t"]
                )
                await b._pubsub.push_msg(ID.from_base58(a.peer_id), forged)
                await trio.sleep(0.5)
                assert tampered not in got
                assert addr_reads == 0
                assert got.count(good) == 1
                assert other in got
                assert b.counters.get("rejected", 0) >= 1
        finally:
            pubsub_module.maybe_consume_signed_record = read_loop  # type: ignore[attr-defined]
        assert records and not any(records)  # RPCs were read, none carried a peer record

    trio.run(main)
