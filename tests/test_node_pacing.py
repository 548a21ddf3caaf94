"""Publish pacing per topic (node/pacing.py), in trio's virtual time."""

from __future__ import annotations

import trio
import trio.testing

from dlnet.node.pacing import TopicPacer


def test_each_topic_keeps_its_order_and_rate_and_no_topic_waits_for_another() -> None:
    rate, burst = 5.0, 5
    sent: dict[str, list[tuple[int, float]]] = {"embedding": [], "vote": []}

    async def publish(pacer: TopicPacer, topic: str, i: int) -> None:
        async with pacer.turn(topic):
            sent[topic].append((i, trio.current_time()))

    async def main() -> None:
        pacer = TopicPacer(rate, burst)
        async with trio.open_nursery() as nursery:
            for i in range(30):  # a burst of evidence first ...
                nursery.start_soon(publish, pacer, "embedding", i)
                await trio.sleep(0)
            await trio.sleep(0.01)
            for i in range(3):  # ... then a validator's votes
                nursery.start_soon(publish, pacer, "vote", i)
                await trio.sleep(0)

    start = 0.0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    evidence, votes = sent["embedding"], sent["vote"]
    assert [i for i, _ in evidence] == list(range(30))  # call order within a topic
    assert [i for i, _ in votes] == list(range(3))
    # The votes went out at once, not after the 25 evidence items over the burst (5 s).
    assert max(t for _, t in votes) < start + 0.1
    # Each topic stays within its bucket: n messages need (n - burst) / rate seconds.
    for n, (_, t) in enumerate(evidence, start=1):
        assert t >= start + (n - burst) / rate - 1e-9
    assert evidence[-1][1] < start + (30 - burst) / rate + 0.5
