"""Which topics a node joins, and that an encoder outside the embedding topic still reaches
the nodes inside it (gossipsub fanout over real libp2p hosts on 127.0.0.1)."""

from __future__ import annotations

import random

import pytest
import trio
from libp2p.peer.id import ID

from dlnet.node.discovery import PeerTable
from dlnet.node.host import open_host
from dlnet.node.runtime import GOSSIPED, subscribed_kinds
from dlnet.node.transport import GossipParams, Verdict
from dlnet.protocol.wire import Kind

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def test_an_encoder_only_node_stays_out_of_the_commit_and_embedding_topics() -> None:
    encoder = subscribed_kinds(frozenset({"encoder"}), "honest")
    assert Kind.EMBEDDING not in encoder and Kind.COMMIT not in encoder
    assert set(encoder) == set(GOSSIPED) - {Kind.COMMIT, Kind.EMBEDDING}
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


def test_eviction_keeps_a_topic_its_last_carriers_but_still_honours_max_peers() -> None:
    table = PeerTable("me")
    for p in "abcde":
        table.learn(f"/ip4/127.0.0.1/tcp/1/p2p/{p}")
    table.note_connected(set("abcde"), 0.0)
    table.degree.update({"a": 20, "b": 4, "c": 3, "d": 2, "e": 1})
    peers = set("abcde")
    # The relay "a" is best connected, so it would go first.
    assert table.eviction_victims(peers, 4, 10.0, 3.0) == ["a"]
    # It is one of a topic's two carriers, at the floor of 2: the next one goes instead.
    assert table.eviction_victims(peers, 4, 10.0, 3.0, {"t": {"a", "e"}}, 2) == ["b"]
    assert table.eviction_victims(peers, 2, 10.0, 3.0, {"t": {"a", "e"}}, 2) == ["b", "c", "d"]
    # Every peer carries the topic: the floor protects only the last two, max_peers holds.
    assert table.eviction_victims(peers, 4, 10.0, 3.0, {"t": peers}, 2) == ["a"]
    assert table.eviction_victims(peers, 2, 10.0, 3.0, {"t": peers}, 2) == ["a", "b", "c"]
    # Two topics at or near their floor: only what keeps both at 2 closes; the bound yields.
    two = {"t": {"a", "b"}, "u": {"c", "d", "e"}}
    assert table.eviction_victims(peers, 2, 10.0, 3.0, two, 2) == ["c"]
    # A peer that reads nothing goes first; upkeep leaves it out of the carriers it counts.
    assert table.eviction_victims(peers, 4, 10.0, 3.0, {"t": {"a", "e"}}, 2, frozenset("d")) == [
        "d"
    ]
    assert table.eviction_victims(peers, 3, 10.0, 3.0, {"t": {"a", "e"}}, 2, frozenset("d")) == [
        "d",
        "b",
    ]


def test_a_thin_topic_dials_known_carriers_first_then_peers_never_met() -> None:
    table = PeerTable("me")
    for p in "abcdef":
        table.learn(f"/ip4/127.0.0.1/tcp/1/p2p/{p}")
    table.note_connected(set("abcd"), 0.0)
    table.note_carriers({"t": {"a"}, "u": {"a", "b", "c", "d"}})
    table.note_connected({"b"}, 1.0)  # a, c and d went away; e and f were never connected
    table.back_off("f", 100.0)
    rng = random.Random(0)
    # "a" carried t before: first. "c" and "d" were met and carried no t: not tried again.
    assert table.outlet_candidates(["t"], {"b"}, 10.0, rng) == ["a", "e"]
    for_u = table.outlet_candidates(["u"], {"b"}, 10.0, rng)
    assert set(for_u[:3]) == {"a", "c", "d"} and for_u[3:] == ["e"]
    later = table.outlet_candidates(["t"], {"b"}, 200.0, rng)  # f's back-off is over
    assert later[0] == "a" and set(later[1:]) == {"e", "f"}


@pytest.mark.network
@pytest.mark.timeout(90)
def test_a_publisher_with_one_outlet_dials_a_second_carrier() -> None:
    """An encoder that reaches the reveal keepers through one relay only (its target of
    peers met) dials another carrier it learned of: one stopped relay no longer cuts it off."""

    async def main() -> None:
        async def handler(data: bytes, peer: str) -> None:
            pass

        # Nobody dials beyond one peer of its own accord: only the thin rule makes a second.
        small = GossipParams(target_peers=1, max_peers=2)
        relay = GossipParams(target_peers=1, max_peers=8)
        async with open_host(listen=LOOPBACK, bootstrap=[], params=relay) as first:
            await first.subscribe("reveals", lambda t, d, p: Verdict.ACCEPT, handler)
            async with open_host(listen=LOOPBACK, bootstrap=first.addrs, params=relay) as second:
                await second.subscribe("reveals", lambda t, d, p: Verdict.ACCEPT, handler)
                async with open_host(listen=LOOPBACK, bootstrap=first.addrs, params=small) as enc:
                    enc.publish_outside("reveals")
                    with trio.fail_after(30):
                        while len(enc.carriers("reveals")) < 2:
                            await trio.sleep(0.05)
                    assert set(enc.carriers("reveals")) == {first.peer_id, second.peer_id}
                    assert enc.counters.get("px.thin_dials", 0) >= 1

    trio.run(main)


@pytest.mark.network
@pytest.mark.timeout(90)
def test_a_publisher_cut_from_every_subscriber_dials_a_seed_again() -> None:
    """The encoder's only peer that joined the topic (the relay, its seed) goes away while
    another peer keeps it above its target: peer upkeep does not wait for the target to be
    missed, a carrier rule (the outlet dial of the seed, or the thin-topic dial of a known
    carrier, whichever tick comes first) dials the relay again, and what it publishes next
    reaches the relay.

    Run after the host tests in one process, the encoder's own requests dialled straight back
    while the relay was still closing the first connection: py-libp2p dropped the new
    connection from the relay's table open, and the encoder's gossip stream stayed on the
    closed one, so the relay looked subscribed and nothing was ever dialled again. Both are
    handled in node/libp2p_compat.py (`keep_new_connections_on_close`,
    `gossip_stream_closed`, which peer upkeep severs)."""
    got: list[bytes] = []

    async def main() -> None:
        async def handler(data: bytes, peer: str) -> None:
            got.append(data)

        small = GossipParams(target_peers=1, max_peers=2)
        # The relay's own upkeep sleeps through the test: left running, it dialled the encoder
        # back on a busy machine before the encoder noticed the cut (so the encoder never had
        # to), and only the encoder's outlet rule is under test.
        still = GossipParams(discovery_interval=600.0)
        async with open_host(listen=LOOPBACK, bootstrap=[], params=still) as relay:
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

                    # Cut from the relay's side, as its eviction or a restart would. The
                    # encoder may dial back before a poll here sees it cut, so what is awaited
                    # is a carrier dial (both rules dial only while a topic lacks carriers:
                    # under load the thin-topic rule's tick came first) and the relay back
                    # among the topic's peers.
                    def carrier_dials() -> int:
                        c = enc.counters
                        return c.get("px.outlet_dials", 0) + c.get("px.thin_dials", 0)

                    dials = carrier_dials()
                    await relay._lp.disconnect(ID.from_base58(enc.peer_id))

                    def back() -> bool:
                        return carrier_dials() > dials and relay.peer_id in enc.topic_peers(
                            "reveals"
                        )

                    with trio.fail_after(30):
                        while not back():
                            await trio.sleep(0.05)
                    await enc.publish("reveals", b"after the cut")
                    with trio.fail_after(15):
                        while not got:
                            await trio.sleep(0.05)
                    assert got == [b"after the cut"]
                    assert enc.counters.get("publish.no_peers", 0) == 0

    trio.run(main)


@pytest.mark.network
@pytest.mark.timeout(90)
def test_a_seed_connection_without_gossip_is_severed_and_dialled_again() -> None:
    """Opening the gossip streams timed out under load (100 x 7 rung): the connection to the
    seed stays up but carries nothing. The outlet rule severs it and dials the seed again,
    and what the encoder publishes next reaches the relay."""
    got: list[bytes] = []

    async def main() -> None:
        async def handler(data: bytes, peer: str) -> None:
            got.append(data)

        small = GossipParams(target_peers=1, max_peers=1, eviction_grace=0.5)
        async with open_host(listen=LOOPBACK, bootstrap=[], params=GossipParams()) as relay:
            await relay.subscribe("commits", lambda t, d, p: Verdict.ACCEPT, handler)
            async with open_host(listen=LOOPBACK, bootstrap=relay.addrs, params=small) as enc:
                enc.publish_outside("commits")
                with trio.fail_after(15):
                    while relay.peer_id not in enc.topic_peers("commits"):
                        await trio.sleep(0.05)
                # Both ends lose the gossip stream; the connection stays.
                await enc._pubsub._teardown_if_connected(ID.from_base58(relay.peer_id))
                await relay._pubsub._teardown_if_connected(ID.from_base58(enc.peer_id))
                assert relay.peer_id in enc.connected_peers()
                assert relay.peer_id not in enc.topic_peers("commits")
                with trio.fail_after(40):
                    while relay.peer_id not in enc.topic_peers("commits"):
                        await trio.sleep(0.05)
                assert enc.counters.get("px.mute_severed", 0) >= 1
                await enc.publish("commits", b"after the redial")
                with trio.fail_after(15):
                    while not got:
                        await trio.sleep(0.05)
                assert got == [b"after the redial"]

    trio.run(main)
