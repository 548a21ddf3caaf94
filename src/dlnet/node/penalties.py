"""Per-peer misbehaviour bookkeeping: one decaying penalty score per peer, request token
buckets, bans, and a log that stays small under a flood (pure bookkeeping; the host acts on
it). Times are ``trio.current_time()`` seconds."""

from __future__ import annotations

import logging

from dlnet.node.pacing import TokenBucket
from dlnet.node.transport import GossipParams

log = logging.getLogger(__name__)


class PeerPenalties:
    """One penalty score per peer, shared by every kind of misbehaviour, with linear decay,
    per-peer request token buckets, bans, and a log bounded under a flood (pure bookkeeping;
    the host acts on `penalize`'s answer). Times are ``trio.current_time()`` seconds."""

    def __init__(self, params: GossipParams) -> None:
        self.params = params
        self._score: dict[str, tuple[float, float]] = {}  # peer -> (points, at)
        self._buckets: dict[str, TokenBucket] = {}
        self._banned: dict[str, float] = {}  # peer -> ban end
        self._logged: dict[tuple[str, str], int] = {}

    def score(self, peer: str, now: float) -> float:
        points, at = self._score.get(peer, (0.0, now))
        return max(0.0, points - (now - at) * self.params.penalty_decay)

    def penalize(self, peer: str, reason: str, points: float, now: float) -> bool:
        """Charge ``peer``; True exactly when this charge starts a ban."""
        self.note(peer, reason)
        if self.banned(peer, now):
            return False
        total = self.score(peer, now) + points
        if total >= self.params.reject_ban_threshold:
            self._score.pop(peer, None)
            self._banned[peer] = now + self.params.ban_seconds
            log.warning(
                "peer %s banned for %.0fs (last: %s)", peer, self.params.ban_seconds, reason
            )
            return True
        self._score[peer] = (total, now)
        return False

    def banned(self, peer: str, now: float) -> bool:
        end = self._banned.get(peer)
        if end is None:
            return False
        if now >= end:
            del self._banned[peer]
            return False
        return True

    def allow_request(self, peer: str, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) > 4096:  # peers come and go: forget idle buckets
                self._buckets.clear()
            bucket = self._buckets[peer] = TokenBucket(
                self.params.request_rate, self.params.request_burst, now
            )
        return bucket.try_take(now)

    def note(self, peer: str, reason: str) -> None:
        """One log line per (peer, reason) at the 1st, 2nd, 4th, 8th, ... occurrence: the
        log grows with the logarithm of a flood, never a traceback."""
        key = (peer, reason)
        n = self._logged.get(key, 0) + 1
        if len(self._logged) > 4096:
            self._logged.clear()
        self._logged[key] = n
        if n & (n - 1) == 0:
            log.info("rejected from %s: %s (%d so far)", peer, reason, n)
