"""Which topics a node joins, and that an encoder outside the embedding topic still reaches
the nodes inside it (gossipsub fanout over real libp2p hosts on 127.0.0.1)."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID

from dlnet.node.discovery import PeerTable
from dlnet.node.host import GossipParams, Verdict, open_host
from dlnet.node.runtime import GOSSIPED, subscribed_kinds
from dlnet.protocol.wire import Kind

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def test_an_encoder_only_node_stays_out_of_the_embedding_topic() -> None:
    encoder = subscribed_kinds(frozenset({"encoder"}), "honest")
    assert Kind.EMBEDDING not in encoder
    assert set(encoder) == set(GOSSIPED) - {Kind.EMBEDDING}
    assert subscribed_kinds(frozenset({"encoder"}), "fabricated@0.2") == encoder
    # Validators, relays (no role) and nodes that are both read every reveal.
    for roles in ({"validator"}, set(), {"encoder", "validator"}):
        assert subscribed_kinds(frozenset(roles), "honest") == GOSSIPED
    # The copycat adversary copies others' reveals, so it must hear them.
    assert Kind.EMBEDDING in subscribed_kinds(frozenset({"encoder"}), "copycat")


@pytest.mark.network
@pytest.mark.timeout(60)
def test_a_publisher_outside_a_topic_reaches_its_subscribers_by_fanout() -> None:
    params = GossipParams()
    got: list[bytes] = []

    async def main() -> None:
        async def handler(data: bytes, peer: str) -> None:
            got.append(data)

        async with open_host(listen=LOOPBACK, bootstrap=[], params=params) as relay:
            await relay.subscribe("reveals", lambda t, d, p: Verdict.ACCEPT, handler)
            async with open_host(listen=LOOPBACK, bootstrap=relay.addrs, params=params) as enc:
                with trio.fail_after(15):  # the relay's subscription reaches the publisher
                    while relay.peer_id not in enc.topic_peers("reveals"):
                        await trio.sleep(0.05)
                sent = [b"reveal-%d" % i for i in range(20)]
                for data in sent:
                    await enc.publish("reveals", data)
                with trio.fail_after(15):
                    while len(got) < len(sent):
                        await trio.sleep(0.05)
                assert sorted(got) == sorted(sent)
                assert enc.mesh_peers("reveals") == []  # it never joined the topic
                assert enc.counters.get("delivered", 0) == 0  # and relays nothing

    trio.run(main)


def test_peers_that_carry_a_topic_published_outside_are_never_evicted() -> None:
    table = PeerTable("me")
    for p in "abcde":
        table.learn(f"/ip4/127.0.0.1/tcp/1/p2p/{p}")
    table.note_connected(set("abcde"), 0.0)
    table.degree.update({"a": 20, "b": 3, "c": 2, "d": 2, "e": 1})
    # The relay "a" is best connected, so it would go first; kept, the next one goes.
    assert table.eviction_victims(set("abcde"), 4, 10.0, 3.0) == ["a"]
    assert table.eviction_victims(set("abcde"), 4, 10.0, 3.0, frozenset("a")) == ["b"]
    assert table.eviction_victims(set("abcde"), 2, 10.0, 3.0, frozenset("abcde")) == []


@pytest.mark.network
@pytest.mark.timeout(90)
def test_a_publisher_cut_from_every_subscriber_dials_a_seed_again() -> None:
    """The encoder's only peer that joined the topic (the relay, its seed) goes away while
    another peer keeps it above its target: only the outlet rule dials the seed again, and
    what it publishes next reaches the relay."""
    got: list[bytes] = []

    async def main() -> None:
        async def handler(data: bytes, peer: str) -> None:
            got.append(data)

        small = GossipParams(target_peers=1, max_peers=2)
        async with open_host(listen=LOOPBACK, bootstrap=[], params=GossipParams()) as relay:
            await relay.subscribe("reveals", lambda t, d, p: Verdict.ACCEPT, handler)
            async with open_host(listen=LOOPBACK, bootstrap=relay.addrs, params=small) as enc:
                enc.publish_outside("reveals")
                with trio.fail_after(15):
                    while relay.peer_id not in enc.topic_peers("reveals"):
                        await trio.sleep(0.05)
                async with open_host(listen=LOOPBACK, bootstrap=enc.addrs, params=small) as other:
                    with trio.fail_after(15):
                        while other.peer_id not in enc.connected_peers():
                            await trio.sleep(0.05)
                    # Cut from the relay's side, as its eviction or a restart would.
                    await relay._lp.disconnect(ID.from_base58(enc.peer_id))
                    with trio.fail_after(15):
                        while relay.peer_id in enc.connected_peers():
                            await trio.sleep(0.01)
                    dials = enc.counters.get("px.outlet_dials", 0)
                    with trio.fail_after(30):
                        while relay.peer_id not in enc.topic_peers("reveals"):
                            await trio.sleep(0.05)
                    assert enc.counters.get("px.outlet_dials", 0) > dials
                    await enc.publish("reveals", b"after the cut")
                    with trio.fail_after(15):
                        while not got:
                            await trio.sleep(0.05)
                    assert got == [b"after the cut"]
                    assert enc.counters.get("publish.no_peers", 0) == 0

    trio.run(main)
