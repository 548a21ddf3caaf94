"""Round clock: when each round and each of its phases starts and ends.

Round r starts at ``genesis_time + r * round_seconds``; its deadlines follow cumulatively:
commit, reveal, repair, attest, finality. The phases after the reveal may run past the start of
round r + 1 (rounds overlap); ``timing.round_window`` keeps round r's messages accepted until
its finality deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlnet.protocol.config import NetworkConfig


@dataclass(frozen=True)
class RoundTimes:
    """Unix times (seconds) of a round's start and phase deadlines."""

    start: float
    commit_deadline: float
    reveal_deadline: float
    repair_deadline: float
    attest_deadline: float
    finality_deadline: float


def round_times(cfg: NetworkConfig, r: int) -> RoundTimes:
    """The start and deadlines of round ``r`` (``r >= 0``)."""
    if r < 0:
        raise ValueError(f"round {r} < 0")
    t = cfg.timing
    start = float(cfg.genesis_time + r * t.round_seconds)
    commit = start + t.commit_seconds
    reveal = commit + t.reveal_seconds
    repair = reveal + t.repair_seconds
    attest = repair + t.attest_seconds
    return RoundTimes(start, commit, reveal, repair, attest, attest + t.finality_seconds)


def round_at(cfg: NetworkConfig, t: float) -> int:
    """The round whose start is the latest one ``<= t``; -1 before genesis."""
    if t < cfg.genesis_time:
        return -1
    # Float floor division is exact at round boundaries (unlike floor of a quotient).
    return int((t - cfg.genesis_time) // cfg.timing.round_seconds)


def accepted_rounds(cfg: NetworkConfig, t: float) -> range:
    """Rounds whose messages a node accepts at time ``t``: the current round, the
    ``round_window`` rounds before it, and the next one (a peer's clock may run ahead)."""
    current = round_at(cfg, t)
    return range(max(0, current - cfg.timing.round_window), current + 2)
