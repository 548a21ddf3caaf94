"""Submissions on a node: the round's scheduled texts for the roles, the validator's schedule
vote, and the answer to a submission lookup (the proof protocol/submissions.py verifies)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dlnet.node.context import NodeContext, sleep_until, wall_clock
from dlnet.node.ingest import Outcome
from dlnet.node.report import verified_certificate
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import ShardTask, round_tasks
from dlnet.protocol.rounds import round_times
from dlnet.protocol.submissions import (
    FixedSchedule,
    fixed_schedule,
    placement,
    round_texts,
    schedule_time,
    select,
)
from dlnet.protocol.wire import (
    Kind,
    Reject,
    Schedule,
    Submission,
    decode,
    encode,
    message_id,
    sign_schedule,
    topic,
)


def _decoded(cfg: NetworkConfig, store: Store, kind: Kind, rnd: int) -> list[tuple[bytes, Any]]:
    out: list[tuple[bytes, Any]] = []
    for data in store.messages(kind, rnd):
        try:
            out.append((data, decode(data, cfg, kind)))
        except Reject:
            continue
    return out


def held_schedule(cfg: NetworkConfig, store: Store, rnd: int) -> FixedSchedule | None:
    votes = [m for _, m in _decoded(cfg, store, Kind.SCHEDULE, rnd) if isinstance(m, Schedule)]
    return fixed_schedule(cfg, rnd, votes)


def held_submissions(cfg: NetworkConfig, store: Store, rnd: int) -> dict[bytes, Submission]:
    return {
        message_id(d): m
        for d, m in _decoded(cfg, store, Kind.SUBMISSION, rnd)
        if isinstance(m, Submission)
    }


def scheduled_tasks(ctx: NodeContext, rnd: int) -> tuple[ShardTask, ...]:
    """Round ``rnd``'s shard tasks with its scheduled submitted texts (none without a fixed
    schedule; the schedule votes carry the texts)."""
    fixed = held_schedule(ctx.cfg, ctx.store, rnd)
    if fixed is None:
        return round_tasks(ctx.cfg, ctx.items, rnd)
    return round_tasks(ctx.cfg, ctx.items, rnd, round_texts(ctx.cfg, fixed.entries))


async def vote_schedule(ctx: NodeContext, key: SigningKey, rnd: int) -> None:
    """At round ``rnd``'s schedule time, sign and publish this validator's Schedule for it."""
    at = schedule_time(ctx.cfg, rnd)
    if wall_clock() > at + 1.0:
        return  # too late to vote on it (a restart): the others' votes decide
    await sleep_until(at)
    held = held_submissions(ctx.cfg, ctx.store, rnd)
    entries = select(ctx.cfg, rnd, held.items())
    vote = sign_schedule(key, ctx.cfg.network_id, rnd, entries)
    if await ctx.publish(Kind.SCHEDULE, vote) is not None and entries:
        ctx.log.info("round %d: scheduled %d submissions", rnd, len(entries))


SUBMIT_MARGIN = 5.0
"""Seconds a submission made now gets to reach the validators before its round's schedule."""


def submitter(ctx: NodeContext) -> Callable[[bytes], Awaitable[Outcome]]:
    """The API's way in: admit a signed Submission like a gossiped one (typed rejects, quota,
    duplicates), store it and, when new, gossip it."""

    async def submit(data: bytes) -> Outcome:
        outcome = ctx.ingest.admit(data, Kind.SUBMISSION)
        if outcome is Outcome.NEW:
            await ctx.host.publish(topic(ctx.cfg.network_id, Kind.SUBMISSION), data)
        return outcome

    return submit


def lookup(cfg: NetworkConfig, store: Store, mid: bytes, now: float) -> dict[str, Any] | None:
    """What a node answers about submission ``mid``: None if it does not hold it; else its
    state (``pending`` before its round's schedule, ``not_scheduled``, ``scheduled`` until the
    round is final, ``not_finalized``, ``final``) and, when final, the proof: the submission,
    the schedule votes that fix its round's schedule and the certificate, all hex, and per text
    its shard and consensus embedding."""
    data = store.get_by_id(mid)
    if data is None:
        return None
    try:
        sub = decode(data, cfg, Kind.SUBMISSION)
    except Reject:
        return None
    if not isinstance(sub, Submission):
        return None
    rnd = sub.round
    out: dict[str, Any] = {
        "id": mid.hex(),
        "round": rnd,
        "submitter": sub.submitter.hex(),
        "texts": list(sub.texts),
        "submission": data.hex(),
    }
    fixed = held_schedule(cfg, store, rnd)
    where = placement(fixed.entries).get(mid) if fixed is not None else None
    if where is None:
        out["state"] = "pending" if now < schedule_time(cfg, rnd) + 5 else "not_scheduled"
        return out
    assert fixed is not None
    out["shards"] = list(where)
    out["schedule"] = [
        d.hex()
        for d, m in _decoded(cfg, store, Kind.SCHEDULE, rnd)
        if isinstance(m, Schedule) and m.validator in fixed.signers and m.entries == fixed.entries
    ]
    cert = verified_certificate(store, cfg, rnd)
    if cert is None:
        held = store.round_outcomes(rnd, rnd)
        late = now > round_times(cfg, rnd).finality_deadline + 60
        out["state"] = "not_finalized" if (held and not held[0][1]) or late else "scheduled"
        return out
    out["state"] = "final"
    out["certificate"] = encode(cert).hex()
    out["embeddings"] = [
        {"text": text, "shard": shard, "float32_le_hex": cert.result.weighted[shard].hex()}
        for text, shard in zip(sub.texts, where, strict=True)
    ]
    return out
