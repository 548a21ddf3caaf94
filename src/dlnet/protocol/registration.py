"""The registered encoder set: admission by proof of work, a bounded set, replacement.

Normative text: docs/PROTOCOL.md §2.7 "Registered encoders". Pure and integer-only, so every
node derives the same set from the genesis and the chain of certified round results.

**Proof of work.** ``work(network_id, key, nonce) = scrypt(password = "dlnet/v1/registration"
|| network_id || key || u64be(nonce), salt = network_id, n = 2^14, r = 8, p = 1, dklen = 32)``
(RFC 7914, 16 MiB of memory per evaluation, so a GPU or ASIC gains far less over a laptop than
on SHA-256). A nonce registers ``key`` at ``difficulty`` d when the first d bits of its work are
0: 2^d evaluations on average to find, one to verify. Every Commit carries its encoder's nonce
(wire.Commit.registration); a node rejects a Commit whose nonce does not meet the config's
difficulty (``bad_registration``), before relaying it.

**The set** (`Registry`): at most ``max_encoders`` keys, each with the round it entered. The
genesis registers the seed encoders at round 0. After each certified round result, in
ascending round order (`admit`): every encoder the result names that is not registered is a
newcomer; newcomers, by descending score in that result (ties by key), take a free place while
there is one; when the set is full, a newcomer replaces the lowest-ranked member past its
immunity (entered at least ``immunity_rounds`` rounds before the result's round; ranked by its
influence after that result, then by the round it entered, then by key) if, and only if, the
newcomer's score in the result is above that member's influence. A newcomer that cannot enter
stays outside (it may try again: its nonce stays valid).

**Who is scored in round r** (`counted`): the members of the set after every certified round
<= r - lag (the same lag as the influence record), plus at most ``openings`` newcomers with a
valid proof, where openings = free places + members past their immunity at round r; the
newcomers by ascending work (their proofs' scrypt output), ties by key. So an attestation lists
at most ``2 * max_encoders`` encoders, and a round result no more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from dlnet.protocol.canonical import pack, sha256
from dlnet.protocol.influence import (
    DEFAULT_PARAMS,
    InfluenceParams,
    InfluenceState,
    apply,
    genesis_state,
    scoring_round,
)
from dlnet.protocol.params import (
    RegistrationParams,
)
from dlnet.protocol.result import RoundResult

REGISTRATION_TAG: Final = b"dlnet/v1/registration"
REGISTRY_TAG: Final = b"dlnet/v1/registry"
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MAX_NONCE: Final = 2**64 - 1


# --- proof of work ----------------------------------------------------------------------------


def work(network_id: bytes, key: bytes, nonce: int) -> bytes:
    """The 32-byte scrypt work of one nonce (see the module docstring)."""
    if not 0 <= nonce <= MAX_NONCE:
        raise ValueError(f"nonce {nonce} outside 0..2^64-1")
    password = REGISTRATION_TAG + network_id + key + nonce.to_bytes(8, "big")
    return hashlib.scrypt(
        password, salt=network_id, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20, dklen=32
    )


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def valid(network_id: bytes, key: bytes, nonce: int, difficulty: int) -> bool:
    """Whether ``nonce`` registers ``key`` on the network at ``difficulty`` (one evaluation;
    none at difficulty 0, where every nonce does)."""
    if not 0 <= nonce <= MAX_NONCE:
        return False
    return difficulty <= 0 or leading_zero_bits(work(network_id, key, nonce)) >= difficulty


def solve(
    network_id: bytes,
    key: bytes,
    difficulty: int,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """The first valid nonce from ``start`` on (2^difficulty evaluations on average);
    ``progress(evaluations so far)`` is called after each evaluation."""
    nonce = start
    while not valid(network_id, key, nonce, difficulty):
        nonce += 1
        if progress is not None:
            progress(nonce - start)
    return nonce


# --- the registered set -----------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """The registered encoders after every certified round <= ``round`` (0 = genesis)."""

    round: int
    members: tuple[tuple[bytes, int], ...]
    """(key, round it entered), keys strictly ascending."""

    def keys(self) -> frozenset[bytes]:
        return frozenset(k for k, _ in self.members)

    def digest(self) -> bytes:
        """``SHA-256("dlnet/v1/registry" || pack([round, [[key, entered], ...]]))``."""
        return sha256(REGISTRY_TAG, pack([self.round, [[k, s] for k, s in self.members]]))

    def past_immunity(self, rnd: int, params: RegistrationParams) -> list[bytes]:
        """Members that may be replaced in round ``rnd`` (entered <= rnd - immunity)."""
        return [k for k, since in self.members if since + params.immunity_rounds <= rnd]


def genesis_registry(seed_encoders: Iterable[bytes]) -> Registry:
    """Round 0: the seed encoders, registered by the genesis itself."""
    return Registry(0, tuple((k, 0) for k in sorted(set(seed_encoders))))


def admit(
    registry: Registry,
    result: RoundResult,
    influence: Mapping[bytes, int],
    params: RegistrationParams,
) -> Registry:
    """The set after the certified ``result`` (see the module docstring); ``influence`` is the
    record after the same result (`influence.apply`), which ranks the members."""
    if result.round <= registry.round:
        raise ValueError(f"registry: round {result.round} applied after round {registry.round}")
    members = dict(registry.members)
    scores = dict(zip(result.encoders, result.encoder_scores, strict=True))
    newcomers = sorted((k for k in scores if k not in members), key=lambda k: (-scores[k], k))
    for key in newcomers:
        if len(members) < params.max_encoders:
            members[key] = result.round
            continue
        movable = [
            m for m, since in members.items() if since + params.immunity_rounds <= result.round
        ]
        if not movable:
            break
        lowest = min(movable, key=lambda m: (influence.get(m, 0), members[m], m))
        if scores[key] <= influence.get(lowest, 0):
            break  # newcomers come by descending score: no later one does better
        del members[lowest]
        members[key] = result.round
    return Registry(result.round, tuple(sorted(members.items())))


def counted(
    registry: Registry,
    rnd: int,
    committed: Mapping[bytes, bytes],
    params: RegistrationParams,
) -> tuple[bytes, ...]:
    """The encoders scored in round ``rnd``, ascending: of ``committed`` (key -> the work of
    its commit's valid proof), every member of ``registry`` (the set `records` gives for
    ``rnd``) and at most ``openings`` newcomers by ascending work, ties by key."""
    keys = registry.keys()
    openings = params.max_encoders - len(keys) + len(registry.past_immunity(rnd, params))
    newcomers = sorted((w, k) for k, w in committed.items() if k not in keys)
    chosen = [k for k in committed if k in keys] + [k for _, k in newcomers[: max(openings, 0)]]
    return tuple(sorted(chosen))


def records(
    seed_encoders: Iterable[bytes],
    results: Iterable[RoundResult],
    upto: int,
    params: RegistrationParams,
    influence_params: InfluenceParams = DEFAULT_PARAMS,
) -> tuple[InfluenceState, Registry]:
    """The influence record and the registered set after every certified result of round <=
    ``upto`` (``results``: one per round, any order): per result, ``influence.apply``, then
    `admit` with that influence, then the influence of every key outside the set is dropped
    (a replaced member loses its record; an encoder that could not enter earns none)."""
    seeds = tuple(seed_encoders)
    influence, registry = genesis_state(seeds), genesis_registry(seeds)
    for result in sorted((r for r in results if r.round <= upto), key=lambda r: r.round):
        after = apply(influence, result, influence_params)
        registry = admit(registry, result, after.as_dict(), params)
        keep = registry.keys()
        kept = tuple((k, w) for k, w in after.weights if k in keep)
        influence = InfluenceState(after.round, kept)
    return influence, registry


def records_for_round(
    seed_encoders: Iterable[bytes],
    results: Iterable[RoundResult],
    rnd: int,
    params: RegistrationParams,
    influence_params: InfluenceParams = DEFAULT_PARAMS,
) -> tuple[InfluenceState, Registry]:
    """What round ``rnd`` is scored with: the records after every certified round <= rnd - lag."""
    return records(
        seed_encoders, results, scoring_round(rnd, influence_params), params, influence_params
    )
