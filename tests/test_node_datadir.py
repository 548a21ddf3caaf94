"""Data dir safety: the LOCK, the network id, the persistent peer key, the saved peers,
slashing protection (what this key signed) and doppelganger detection."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from dlnet.node.context import NodeContext
from dlnet.node.host import open_host
from dlnet.node.ingest import Ingest
from dlnet.node.keyfile import KeyFileError, peer_key_seed
from dlnet.node.runtime import (
    GOSSIPED,
    Doppelganger,
    NodeError,
    _subscribe_all,
    data_dir_lock,
    read_saved_peers,
)
from dlnet.node.store import Store, StoreError
from dlnet.node.transport import GossipParams, Verdict
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, encode, message_id, sign_vote, topic

VALIDATOR = SigningKey.from_seed(b"\x01" * 32)


@pytest.fixture
def cfg() -> NetworkConfig:
    return default_config(
        [ValidatorEntry(VALIDATOR.public_key, 1)], 1_800_000_000, dataset_sha256=bytes(32)
    )


# ----- store: network id and what this key signed -------------------------------------------


def test_store_binds_its_network_at_first_start(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.sqlite")
    store.bind_network(b"\x01" * 32, tmp_path)
    store.bind_network(b"\x01" * 32, tmp_path)  # the same network: fine, every start
    store.close()
    store = Store.open(tmp_path / "node.sqlite")
    with pytest.raises(StoreError, match=r"holds network 0101010101010101.*0202020202020202"):
        store.bind_network(b"\x02" * 32, tmp_path)
    assert store.get_meta("network_id") == (b"\x01" * 32).hex()


def test_store_refuses_a_conflicting_signature_for_a_slot(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.sqlite")
    me, other = b"m" * 32, b"o" * 32
    assert store.record_signing(me, int(Kind.VOTE), 7, None, None, b"a" * 32) is None
    # The same message again (a republish, a restart re-signing deterministically): allowed.
    assert store.record_signing(me, int(Kind.VOTE), 7, None, None, b"a" * 32) is None
    # Another message for the same (kind, round, shard, slot): refused, the first id returned.
    assert store.record_signing(me, int(Kind.VOTE), 7, None, None, b"b" * 32) == b"a" * 32
    # Other places are independent: another round, kind, slot, or signer.
    assert store.record_signing(me, int(Kind.VOTE), 8, None, None, b"b" * 32) is None
    assert store.record_signing(me, int(Kind.ATTESTATION), 7, None, None, b"c" * 32) is None
    assert store.record_signing(me, int(Kind.EMBEDDING), 7, 0, 1, b"d" * 32) is None
    assert store.record_signing(me, int(Kind.EMBEDDING), 7, 0, 2, b"e" * 32) is None
    assert store.record_signing(me, int(Kind.EMBEDDING), 7, 0, 1, b"f" * 32) == b"d" * 32
    assert store.record_signing(other, int(Kind.VOTE), 7, None, None, b"g" * 32) is None
    store.close()
    store = Store.open(tmp_path / "node.sqlite")  # survives a restart
    assert store.record_signing(me, int(Kind.VOTE), 7, None, None, b"h" * 32) == b"a" * 32
    assert store.signed_here(b"a" * 32) and not store.signed_here(b"h" * 32)


class _Host:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.sent.append(data)


def _ctx(cfg: NetworkConfig, store: Store) -> tuple[NodeContext, _Host]:
    host = _Host()
    clock = round_times(cfg, 3).start + 1
    ingest = Ingest(cfg, store, lambda: clock)
    return NodeContext(cfg, (), store, ingest, host, None), host  # type: ignore[arg-type]


def test_publish_never_signs_two_votes_for_a_round(cfg: NetworkConfig, tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.sqlite")
    ctx, host = _ctx(cfg, store)
    first = sign_vote(VALIDATOR, cfg.network_id, 3, b"\x01" * 32)
    second = sign_vote(VALIDATOR, cfg.network_id, 3, b"\x02" * 32)

    async def main() -> None:
        assert await ctx.publish(Kind.VOTE, first) == encode(first)
        assert await ctx.publish(Kind.VOTE, first) == encode(first)  # the same vote again
        assert await ctx.publish(Kind.VOTE, second) is None

    trio.run(main)
    assert host.sent == [encode(first), encode(first)]
    assert store.counters().get("refused:conflicting_signature") == 1
    assert store.messages(Kind.VOTE, 3) == [encode(first)]


# ----- doppelganger --------------------------------------------------------------------------


class _Scope:
    cancel_called = False

    def cancel(self) -> None:
        self.cancel_called = True


def test_a_message_signed_by_our_key_elsewhere_halts_the_node(
    cfg: NetworkConfig, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "node.sqlite")
    ctx, host = _ctx(cfg, store)
    scope = _Scope()
    guard = Doppelganger(ctx, VALIDATOR.public_key, scope)  # type: ignore[arg-type]
    mine = sign_vote(VALIDATOR, cfg.network_id, 3, b"\x01" * 32)
    trio.run(ctx.publish, Kind.VOTE, mine)
    guard.check(encode(mine), "peerA")  # our own message, replayed to us: fine
    someone = SigningKey.from_seed(b"\x09" * 32)
    guard.check(encode(sign_vote(someone, cfg.network_id, 3, b"\x05" * 32)), "peerA")
    guard.check(b"garbage" + VALIDATOR.public_key, "peerA")  # undecodable: not evidence
    assert ctx.halted is None and not scope.cancel_called
    twin = sign_vote(VALIDATOR, cfg.network_id, 4, b"\x03" * 32)  # signed by another process
    guard.check(encode(twin), "peerB")
    assert scope.cancel_called
    assert ctx.halted is not None and "another live process" in ctx.halted
    assert store.counters().get("evidence:doppelganger") == 1
    # Halted: nothing more is signed.
    later = sign_vote(VALIDATOR, cfg.network_id, 5, b"\x04" * 32)
    assert trio.run(ctx.publish, Kind.VOTE, later) is None
    assert host.sent == [encode(mine)]
    assert not store.signed_here(message_id(encode(later)))


# ----- files in the data dir -----------------------------------------------------------------


def test_peer_key_is_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    seed = peer_key_seed(path)
    assert len(seed) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peer_key_seed(path) == seed
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        peer_key_seed(path)
    path.chmod(0o600)
    path.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match="not a dlnet peer key"):
        peer_key_seed(path)


def test_second_holder_of_the_lock_is_refused(tmp_path: Path) -> None:
    with data_dir_lock(tmp_path):
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())
        with (
            pytest.raises(NodeError, match=f"in use by another dlnet process \\(pid {os.getpid()}"),
            data_dir_lock(tmp_path),
        ):
            pass
    with data_dir_lock(tmp_path):  # released
        pass


def test_saved_peers_file_is_forgiving(tmp_path: Path) -> None:
    assert read_saved_peers(tmp_path) == []
    (tmp_path / "peers.json").write_text("{broken")
    assert read_saved_peers(tmp_path) == []
    (tmp_path / "peers.json").write_text(json.dumps({"peers": ["/ip4/1.2.3.4/tcp/1/p2p/x", 5]}))
    assert read_saved_peers(tmp_path) == ["/ip4/1.2.3.4/tcp/1/p2p/x"]


# ----- status handshake (in-process hosts) ---------------------------------------------------


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_peer_of_another_network_is_refused_by_the_status_exchange(
    caplog: pytest.LogCaptureFixture,
) -> None:
    params = GossipParams(discovery_interval=0.3)
    net_a, net_b = b"\xaa" * 32, b"\xbb" * 32
    seen: list[tuple[str, bytes]] = []

    async def main() -> None:
        async with (
            open_host(
                listen="/ip4/127.0.0.1/tcp/0",
                bootstrap=[],
                params=params,
                network_tag="aa",
                network_id=net_a,
            ) as a,
            open_host(
                listen="/ip4/127.0.0.1/tcp/0",
                bootstrap=a.addrs,
                params=params,
                network_tag="bb",
                network_id=net_b,
            ) as b,
        ):
            a.on_wrong_network = lambda peer, theirs: seen.append((peer, theirs))
            with trio.fail_after(15):
                while (
                    a.counters.get("rejected.wrong_network", 0) == 0
                    or b.counters.get("rejected.wrong_network", 0) == 0
                ):
                    await trio.sleep(0.1)
                while a.peer_id in b.connected_peers():
                    await trio.sleep(0.1)
            # b dials a again during its back-off (as a hostile peer would, bypassing its own
            # peer maintenance): the connection is closed at the next tick, without a second
            # refusal being logged or counted.
            await b._lp.connect(info_from_p2p_addr(multiaddr.Multiaddr(a.addrs[0])))
            with trio.fail_after(10):
                while a.peer_id in b.connected_peers() or b.peer_id in a.connected_peers():
                    await trio.sleep(0.1)
            assert a.counters.get("refused_foreign", 0) + b.counters.get("refused_foreign", 0) >= 1
            assert a.counters["rejected.wrong_network"] == 1
            assert seen == [(b.peer_id, net_b)]
            assert a.known_addrs() == []  # a foreign peer is not saved for the next start

    trio.run(main)
    lines = [r.getMessage() for r in caplog.records if "is on network" in r.getMessage()]
    assert any("aaaaaaaaaaaaaaaa" in m and "bbbbbbbbbbbbbbbb" in m for m in lines), lines


@pytest.mark.network
@pytest.mark.timeout(60)
def test_doppelganger_over_gossip_halts_the_node(cfg: NetworkConfig, tmp_path: Path) -> None:
    """The runtime's wiring: a vote signed with our key arrives by gossip from another host
    (the key live in another process); the node halts and would exit with one line."""
    params = GossipParams(discovery_interval=0.3)
    store = Store.open(tmp_path / "node.sqlite")
    vote_topic = topic(cfg.network_id, Kind.VOTE)

    async def ignore(_data: bytes, _peer: str) -> None:
        return None

    async def main() -> None:
        async with (
            open_host(listen="/ip4/127.0.0.1/tcp/0", bootstrap=[], params=params) as twin,
            open_host(listen="/ip4/127.0.0.1/tcp/0", bootstrap=twin.addrs, params=params) as me,
        ):
            ctx, _ = _ctx(cfg, store)
            with trio.CancelScope() as scope:
                guard = Doppelganger(ctx, VALIDATOR.public_key, scope)
                await _subscribe_all(me, ctx.ingest, cfg, guard.check, GOSSIPED)
                await twin.subscribe(vote_topic, lambda *_: Verdict.ACCEPT, ignore)
                with trio.fail_after(20):
                    while me.peer_id not in twin.mesh_peers(vote_topic):
                        await trio.sleep(0.1)
                    vote = sign_vote(VALIDATOR, cfg.network_id, 3, b"\x07" * 32)
                    await twin.publish(vote_topic, encode(vote))
                    await trio.sleep_forever()  # until the guard cancels the scope
            assert scope.cancelled_caught
            assert ctx.halted is not None and "another live process" in ctx.halted

    trio.run(main)
    assert store.counters().get("evidence:doppelganger") == 1
