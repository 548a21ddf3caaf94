"""Pacing: token buckets, and the order and rate in which a node publishes into each topic.

py-libp2p's gossipsub spam protection, when on, drops more than ``spam_limit`` messages a
second from one peer in one topic (docs/FINDINGS.md), so a node paces its own publishes per
topic below that limit. Per topic, not per node: a burst of one kind (equivocation evidence
on the embedding topic, say) then never holds back another (the votes a round's finality
waits for)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

_SLACK = 1e-9
"""Tokens short of a whole one that still count as one: after sleeping exactly the time a
token takes, float rounding can leave 0.99999999..., and `take` would sleep a step too small
to move the clock, forever."""


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = trio.current_time() if now is None else now

    def try_take(self, now: float) -> bool:
        """Take one token if there is one (no waiting)."""
        self.tokens = min(self.burst, self.tokens + max(now - self.stamp, 0.0) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 - _SLACK:
            self.tokens = max(self.tokens - 1.0, 0.0)
            return True
        return False

    async def take(self) -> None:
        while not self.try_take(trio.current_time()):
            await trio.sleep((1.0 - self.tokens) / self.rate)


class TopicPacer:
    """Publishing turns: within one topic in call order and at most ``rate`` a second after a
    burst of ``burst``; topics do not wait for each other."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._topics: dict[str, tuple[trio.Lock, TokenBucket]] = {}

    @asynccontextmanager
    async def turn(self, topic: str) -> AsyncIterator[None]:
        """Wait for ``topic``'s next turn (held until the block ends, so that what the
        block publishes keeps the call order)."""
        if topic not in self._topics:
            self._topics[topic] = (trio.Lock(), TokenBucket(self.rate, self.burst))
        lock, bucket = self._topics[topic]
        async with lock:
            await bucket.take()
            yield
