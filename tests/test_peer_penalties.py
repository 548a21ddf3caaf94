"""PeerPenalties (node/penalties.py): one score per peer shared by every misbehaviour, with decay,
per-peer request token buckets, bans, and a log that grows with the logarithm of a flood."""

from __future__ import annotations

import logging

import pytest
import trio

from dlnet.node.host import open_host
from dlnet.node.penalties import PeerPenalties
from dlnet.node.transport import GossipParams, RequestError


def params(**kw: float) -> GossipParams:
    base: dict[str, float] = {
        "reject_ban_threshold": 5,
        "penalty_decay": 1.0,
        "ban_seconds": 10.0,
        "request_rate": 2.0,
        "request_burst": 3,
    }
    base.update(kw)
    return GossipParams(**base)  # type: ignore[arg-type]


def test_penalties_of_different_kinds_add_up_to_one_ban() -> None:
    p = PeerPenalties(params())
    reasons = ["validator", "sync_malformed", "rate_limited", "sync_bad_item"]
    assert [p.penalize("a", r, 1.0, 0.0) for r in reasons] == [False] * 4
    assert p.penalize("a", "ignored_duplicate", 1.0, 0.0) is True
    assert p.banned("a", 9.9) and not p.banned("b", 1.0)
    assert p.penalize("a", "validator", 1.0, 5.0) is False  # no second ban while banned
    assert not p.banned("a", 10.0)


def test_points_decay_so_a_slow_trickle_never_bans() -> None:
    p = PeerPenalties(params())
    assert not any(p.penalize("a", "validator", 1.0, float(t)) for t in range(100))
    assert p.score("a", 100.0) == 0.0


def test_request_bucket_allows_the_burst_then_the_rate() -> None:
    p = PeerPenalties(params())
    assert [p.allow_request("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert p.allow_request("b", 0.0)  # per peer
    assert not p.allow_request("a", 0.2)
    assert p.allow_request("a", 0.6)  # 2/s refills one token in 0.5 s


def test_flood_logs_logarithmically(caplog: pytest.LogCaptureFixture) -> None:
    p = PeerPenalties(params(reject_ban_threshold=10**9))
    with caplog.at_level(logging.INFO, logger="dlnet.node.penalties"):
        for _ in range(10_000):
            p.penalize("a", "sync_malformed", 1.0, 0.0)
    lines = [r for r in caplog.records if "sync_malformed" in r.getMessage()]
    assert 10 <= len(lines) <= 15
    assert all(r.exc_info is None for r in caplog.records)


@pytest.mark.network
@pytest.mark.timeout(150)
def test_a_flooding_peer_is_rate_limited_then_banned_and_refused() -> None:
    # A refill slower than any round trip and a decay slower still: however loaded the machine
    # (CI saw no ban within 200 requests when each round trip outlasted a 5/s refill; a run
    # beside a testnet, none within 200 at a 0.1/s decay, most of them timing out; CI beside a
    # testnet, 9 refusals in 40 s at a 0.5/s refill), requests sent back to back outrun the
    # bucket and the refusals' points add up to the ban.
    params = GossipParams(
        request_rate=0.05, request_burst=5, reject_ban_threshold=10, penalty_decay=0.01
    )
    loopback = "/ip4/127.0.0.1/tcp/0"

    async def main() -> None:
        async def serve(data: bytes, peer: str) -> bytes:
            return data

        async with open_host(listen=loopback, bootstrap=[], params=params) as a:
            a.set_request_handler("/test/echo/1", serve, max_request_bytes=64)
            async with open_host(listen=loopback, bootstrap=a.addrs, params=params) as b:
                with trio.fail_after(10):
                    while a.peer_id not in b.connected_peers():
                        await trio.sleep(0.05)
                with pytest.raises(RequestError):  # refused from its header, unread
                    await b.request(a.peer_id, "/test/echo/1", b"x" * 65, 5)
                # Sent back to back until the ban (bounded): on a slow machine each round trip
                # takes longer, so more tokens refill and more points decay on the way.
                answered = refused = 0
                start = trio.current_time()
                while not a.is_banned(b.peer_id) and trio.current_time() - start < 90:
                    try:
                        await b.request(a.peer_id, "/test/echo/1", b"hi", 2)
                        answered += 1
                    except RequestError:
                        refused += 1
                elapsed = trio.current_time() - start
                # the burst, then at most the refill rate: the rest were refused
                assert answered <= 5 + 0.05 * elapsed + 1, (answered, elapsed)
                assert refused >= 10, (refused, answered, elapsed)
                assert a.counters["requests.rate_limited"] >= 1
                assert a.counters["banned"] == 1
                assert a.is_banned(b.peer_id)
                with pytest.raises(RequestError):  # banned: refused whatever it asks
                    await b.request(a.peer_id, "/test/echo/1", b"hi", 2)
                assert a.counters["penalty.bad_request_frame"] == 1

    trio.run(main)
