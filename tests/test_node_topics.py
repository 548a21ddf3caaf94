"""Which topics a node joins, and that an encoder outside the embedding topic still reaches
the nodes inside it (gossipsub fanout over real libp2p hosts on 127.0.0.1)."""

from __future__ import annotations

import pytest
import trio

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
