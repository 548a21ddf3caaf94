"""Round clock: starts, cumulative deadlines, the round at a time, the accepted window."""

from hypothesis import given
from hypothesis import strategies as st

from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.rounds import accepted_rounds, round_at, round_times

GENESIS = 1_700_000_000


def cfg(round_seconds: int = 40) -> NetworkConfig:
    return default_config(
        [ValidatorEntry(sha256(b"v"), 1)],
        GENESIS,
        dataset_sha256=sha256(b"d"),
        round_seconds=round_seconds,
    )


def test_round_times_are_cumulative() -> None:
    times = round_times(cfg(), 3)
    assert times.start == GENESIS + 3 * 40
    assert times.commit_deadline == times.start + 20
    assert times.reveal_deadline == times.commit_deadline + 8
    assert times.repair_deadline == times.reveal_deadline + 6
    assert times.attest_deadline == times.repair_deadline + 6
    assert times.finality_deadline == times.attest_deadline + 6
    assert times.finality_deadline > round_times(cfg(), 4).start, "rounds overlap"


def test_round_at_boundaries() -> None:
    c = cfg()
    assert round_at(c, GENESIS - 0.001) == -1
    assert round_at(c, 0) == -1
    assert round_at(c, GENESIS) == 0
    assert round_at(c, GENESIS + 39.999) == 0
    assert round_at(c, GENESIS + 40) == 1
    assert round_at(c, GENESIS + 40 * 1000) == 1000


@given(st.integers(2, 600), st.floats(0, 1e7, allow_nan=False))
def test_round_at_inverts_round_times(round_seconds: int, offset: float) -> None:
    c = cfg(round_seconds)
    t = GENESIS + offset
    r = round_at(c, t)
    assert round_times(c, r).start <= t < round_times(c, r + 1).start


@given(st.integers(2, 600), st.integers(0, 10_000), st.floats(0, 1))
def test_round_messages_accepted_until_finality(round_seconds: int, r: int, frac: float) -> None:
    """Every phase of round r ends inside the window that still accepts r's messages."""
    c = cfg(round_seconds)
    times = round_times(c, r)
    t = times.start + frac * (times.finality_deadline - times.start)
    window = accepted_rounds(c, t)
    assert r in window
    assert round_at(c, t) + 1 in window, "the next round is accepted (clock skew)"
    assert round_at(c, t) + 2 not in window


def test_accepted_rounds_window() -> None:
    c = cfg()
    assert accepted_rounds(c, GENESIS - 100) == range(0, 1)
    assert accepted_rounds(c, GENESIS + 1) == range(0, 2)
    now = GENESIS + 10 * 40 + 1
    assert accepted_rounds(c, now) == range(10 - c.timing.round_window, 12)
