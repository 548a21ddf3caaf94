"""Earned influence: each encoder's weight in the peer statistics, from its certified record.

An encoder's influence is a u16 (0..65535) that any node derives from the genesis and the chain
of certified round results, integers only, so every node computes the same bits:

- genesis: every seed encoder of the config (``seed_encoders``) has ``U16_MAX``; every other key
  has 0 (a new identity has no influence over others' scores);
- ``apply(state, result)``, for each certified round in ascending order: every key that is in
  the state or in the result moves to ``(old * (den - num) + score * num) // den``, where
  ``score`` is its ``encoder_scores`` entry in the result (0 if the result does not name it):
  an exponential moving average of its consensus score with factor ``num / den`` (1/4); keys
  whose influence falls to 0 are dropped. A round without a certificate changes nothing.
- the state a validator scores round r with is the one after every certified round <= r - lag
  (lag 2): the certificate of r - 1 may still be in its finality phase while r is scored
  (rounds overlap), that of r - 2 is final long before r's reveal deadline.

Scoring (`scoring.score_round`) weights every voice by its influence (a voice of
near-duplicates takes the MAX of its members', never the sum); when no voice of a shard has
any influence every voice weighs 1 (a network without seeds and without a record yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dlnet.protocol.canonical import pack, sha256
from dlnet.protocol.result import U16_MAX, RoundResult

INFLUENCE_TAG = b"dlnet/v1/influence"


@dataclass(frozen=True)
class InfluenceParams:
    """Protocol constants of the influence record (not in the config)."""

    ema_num: int = 1
    ema_den: int = 4
    """EMA factor num/den: how much of a round's score enters the record (1/4: a record halves
    its distance to the current score in about 2.4 certified rounds)."""
    lag: int = 2
    """Round r is scored with the state after every certified round <= r - lag."""


DEFAULT_PARAMS = InfluenceParams()


@dataclass(frozen=True)
class InfluenceState:
    """The record after every certified round <= ``round`` (0 = genesis)."""

    round: int
    weights: tuple[tuple[bytes, int], ...]
    """(key, influence) with influence in 1..65535, keys strictly ascending."""

    def as_dict(self) -> dict[bytes, int]:
        return dict(self.weights)

    def of(self, key: bytes) -> int:
        return self.as_dict().get(key, 0)

    def digest(self) -> bytes:
        """``SHA-256("dlnet/v1/influence" || pack([round, [[key, influence], ...]]))``."""
        return sha256(INFLUENCE_TAG, pack([self.round, [[k, w] for k, w in self.weights]]))


def genesis_state(seed_encoders: Iterable[bytes]) -> InfluenceState:
    """Round 0: every seed encoder at full influence (65535), every other key at 0."""
    return InfluenceState(0, tuple((k, U16_MAX) for k in sorted(set(seed_encoders))))


def apply(
    state: InfluenceState, result: RoundResult, params: InfluenceParams = DEFAULT_PARAMS
) -> InfluenceState:
    """The state after the certified ``result`` (its round must be after ``state.round``)."""
    if result.round <= state.round:
        raise ValueError(f"influence: round {result.round} applied after round {state.round}")
    scores = dict(zip(result.encoders, result.encoder_scores, strict=True))
    old = state.as_dict()
    keep = params.ema_den - params.ema_num
    out = []
    for key in sorted(old.keys() | scores.keys()):
        value = (old.get(key, 0) * keep + scores.get(key, 0) * params.ema_num) // params.ema_den
        if value > 0:
            out.append((key, min(value, U16_MAX)))
    return InfluenceState(result.round, tuple(out))


def derive(
    seed_encoders: Iterable[bytes],
    results: Iterable[RoundResult],
    upto: int,
    params: InfluenceParams = DEFAULT_PARAMS,
) -> InfluenceState:
    """The state after every result of round <= ``upto``, applied in ascending round order
    (``results``: the certified results held, any order; one per round)."""
    state = genesis_state(seed_encoders)
    for result in sorted((r for r in results if r.round <= upto), key=lambda r: r.round):
        state = apply(state, result, params)
    return state


def scoring_round(rnd: int, params: InfluenceParams = DEFAULT_PARAMS) -> int:
    """The last certified round whose result the influence used to score round ``rnd`` rests
    on (``rnd - lag``; <= 0 means the genesis state)."""
    return rnd - params.lag


def voice_influence(influence: Mapping[bytes, int], members: Iterable[bytes]) -> int:
    """A voice of near-duplicates weighs as its most influential member: the max, never the sum
    (copies of one model cannot add up their records)."""
    return max((influence.get(k, 0) for k in members), default=0)
