"""Probes, node side (docs/PROTOCOL.md §2.8; the rules are protocol/probes.py): the prober
publishes its probe before the round and its key once the commits are final; an encoder pulls
the probe and embeds its halves beside its shards; every validator grades every committed
encoder on every probe whose key it holds, and scores with the pooled grades."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from dlnet.node.byzantine import Byzantine
from dlnet.node.context import NodeContext
from dlnet.node.ingest import COMMIT_GRACE
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.probes import (
    build_probe,
    key_hash,
    pairing,
    probe_factor,
    probe_grade,
    probe_seed,
    probe_shard,
)
from dlnet.protocol.round import RoundView, lists_probe, probe_vectors
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Kind, Probe, ProbeKey, sign_probe, sign_probe_key

PROBE_LEAD: Final = 5.0
"""Seconds before its round's start the prober publishes the probe: encoders pull what gossip
missed from 3 s before the start (`submissions.SCHEDULE_PULL`)."""
PROBE_GRACE: Final = 2.0
"""Seconds into the commit phase an encoder still without the round's probe keeps pulling it
before it embeds (without it, it scores 0 in the round: `probe_inputs`)."""
KEY_DELAY: Final = COMMIT_GRACE + 1.0
"""Seconds after the commit deadline the prober publishes its key: after the grace in which a
late commit still counts (`ingest.COMMIT_GRACE`), so that no commit made with the key counts."""
LOOKBACK_FACTOR: Final = 4
"""A validator looks for an encoder's latest ``probe_window`` grades among this many times as
many rounds back (an encoder that skips rounds has fewer)."""


async def run_prober(
    ctx: NodeContext,
    key: SigningKey,
    rnd: int,
    source: Sequence[str],
    byzantine: Byzantine | None = None,
) -> None:
    """Round ``rnd``'s prober's part (its caller, `ValidatorRole`, checks that ``key`` is
    `prober`): build its probe from ``source`` (the validator's probe texts), publish it
    ``PROBE_LEAD`` before the round, and its key ``KEY_DELAY`` after the commit deadline. A
    prober that starts after the round began skips the probe (encoders have embedded by then).
    ``byzantine``: TEST ONLY (node/byzantine.py)."""
    cfg = ctx.cfg
    times = round_times(cfg, rnd)
    if ctx.clock.now() > times.start:
        return
    probe_key = sign_probe_key(key, cfg.network_id, rnd)
    seed = probe_seed(probe_key.signature)
    try:
        halves = build_probe(seed, source, cfg.scoring.probe_texts, cfg.mask_fraction)
    except ValueError as exc:
        ctx.log.error("round %d: no probe: %s", rnd, exc)
        return
    await ctx.clock.sleep_until(times.start - PROBE_LEAD)
    commitment = key_hash(probe_key.signature)
    if byzantine is not None:
        commitment = byzantine.probe_key_hash(commitment)
    probe = sign_probe(key, cfg.network_id, rnd, halves, commitment)
    if await ctx.publish(Kind.PROBE, probe) is None:
        return
    ctx.log.info("round %d: published a probe of %d texts", rnd, len(halves) // 2)
    await ctx.clock.sleep_until(times.commit_deadline + KEY_DELAY)
    await ctx.publish(Kind.PROBE_KEY, probe_key)


def held_probe(ctx: NodeContext, rnd: int) -> Probe | None:
    """The round's probe if held (from its prober: decoding admits no other)."""
    held = ctx.store.held(Probe, rnd)
    return held[0].msg if held else None


async def pull_probe(ctx: NodeContext, rnd: int, deadline: float) -> None:
    """When probes are on and gossip has not brought the round's probe, fetch it from peers
    until it is held or ``deadline`` (retrying: a prober cut off from its peers when it
    published reaches the others only through their pulls)."""
    if ctx.cfg.scoring.probe_texts:
        await ctx.sync.fetch_round_until(
            Kind.PROBE, rnd, lambda: held_probe(ctx, rnd) is not None, deadline=deadline
        )


ProbeInputs = tuple[tuple[tuple[int, int], ...], dict[bytes, list[NDArray[np.float32] | None]]]


async def pull_probe_key(ctx: NodeContext, rnd: int, deadline: float) -> None:
    """A validator's pull of what grading round ``rnd``'s probe needs, if gossip missed it: the
    probe and its key, once the key is out (`KEY_DELAY` after the commit deadline, + 1 s),
    until ``deadline``."""
    if not ctx.cfg.scoring.probe_texts:
        return
    await ctx.clock.sleep_until(round_times(ctx.cfg, rnd).commit_deadline + KEY_DELAY + 1.0)
    await pull_probe(ctx, rnd, deadline)
    if not ctx.store.held(ProbeKey, rnd):
        await ctx.sync.fetch_round(Kind.PROBE_KEY, rnd, deadline=deadline)


def opening_key(ctx: NodeContext, rnd: int) -> ProbeKey | None:
    """The key that grades round ``rnd``'s probe: the held ProbeKey that opens the held Probe's
    ``key_hash``; None while either is missing, and for good once this node holds evidence of
    the prober equivocating in the round (two Probes, two keys, or any other two messages
    where one was due): every validator that learns of it leaves the round's probe ungraded,
    so none grades with a key another never held."""
    probe = held_probe(ctx, rnd)
    if probe is None or probe.validator in ctx.store.equivocators(rnd):
        return None
    for held in ctx.store.held(ProbeKey, rnd):
        if key_hash(held.msg.signature) == probe.key_hash:
            return held.msg
    return None


def probe_inputs(ctx: NodeContext, view: RoundView, rnd: int) -> ProbeInputs | None:
    """What grading round ``rnd``'s probe takes (read from the store, on the trio thread):
    its pairing and the probe vectors by position of every committed encoder whose commit
    lists the halves (`lists_probe`). One that skipped the probe is left out: it is not
    graded, and its factor is 0 in this round only (`ValidatorRole.probe_factors`), so an
    encoder that joined mid-round without the probe is not dragged down by a grade of 0 in
    the rounds that follow. None while no key opens it (`opening_key`). A reveal not held is
    None there (that text grades 0)."""
    cfg = ctx.cfg
    key = opening_key(ctx, rnd) if cfg.scoring.probe_texts else None
    if key is None:
        return None
    halves = 2 * cfg.scoring.probe_texts
    shard = probe_shard(cfg)
    return pairing(probe_seed(key.signature), cfg.scoring.probe_texts), {
        enc: probe_vectors(view, enc, shard, cfg.slots_per_shard, halves)
        for enc in view.commits
        if lists_probe(view, enc, shard, cfg.slots_per_shard, halves)
    }


def grades(inputs: ProbeInputs) -> dict[bytes, int]:
    """`probe_grade` of every encoder of ``inputs`` (pure: run on a worker thread)."""
    pairs, vectors = inputs
    return {enc: probe_grade(pairs, vecs) for enc, vecs in vectors.items()}


class ProbeLedger:
    """A validator's grades of the rounds it scored (round -> encoder -> grade, with the
    round's prober) and the probe factors it scores with. A round's grades are final once
    its repair is over; they are kept for the rounds a factor may look back on, in memory:
    a restarted validator grades again the rounds its store still holds."""

    def __init__(self) -> None:
        self._grades: dict[int, tuple[bytes, dict[bytes, int]]] = {}

    def record(self, rnd: int, who: bytes, grades: dict[bytes, int]) -> None:
        self._grades[rnd] = (who, grades)

    def forget(self, rnd: int) -> None:
        self._grades.pop(rnd, None)

    def has(self, rnd: int) -> bool:
        return rnd in self._grades

    def factors(self, rnd: int, encoders: Sequence[bytes], window: int) -> dict[bytes, float]:
        """Each encoder's probe factor at round ``rnd``: `probe_factor` over its grades of
        rounds ``rnd - LOOKBACK_FACTOR * window + 1 .. rnd``, oldest first (grades of older
        rounds are dropped on the way: no later round looks back that far)."""
        first = rnd - LOOKBACK_FACTOR * window + 1
        self._grades = {r: g for r, g in self._grades.items() if r >= first}
        rounds = sorted(r for r in self._grades if r <= rnd)
        out: dict[bytes, float] = {}
        for enc in encoders:
            history = [
                (who, grades[enc])
                for who, grades in (self._grades[r] for r in rounds)
                if enc in grades
            ]
            out[enc] = probe_factor(history, window)
        return out
