"""Submissions on a node: the round's scheduled texts for the roles, the validator's schedule
vote, and the answer to a submission lookup (the proof protocol/submissions.py verifies)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dlnet.node.context import NodeContext
from dlnet.node.ingest import Outcome
from dlnet.node.report import verified_certificate
from dlnet.node.store import Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import ShardTask, round_tasks, split_units
from dlnet.protocol.result import RoundResult, text_digest
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
    sign_schedule,
    topic,
)


def held_schedule(cfg: NetworkConfig, store: Store, rnd: int) -> FixedSchedule | None:
    return fixed_schedule(cfg, rnd, [v.msg for v in store.held(Schedule, rnd)])


def held_submissions(store: Store, rnd: int) -> dict[bytes, Submission]:
    return {v.id: v.msg for v in store.held(Submission, rnd)}


SCHEDULE_PULL = 3.0
"""Seconds a node spends pulling a round's Schedule votes it lacks from its peers."""
SUBMISSION_PULL = 2.0
"""Seconds before its schedule time a validator pulls the round's Submissions it lacks."""


async def pull_schedule(ctx: NodeContext, rnd: int, deadline: float) -> None:
    """Gossip is best-effort: unless a vote of every validator for round ``rnd`` is held,
    fetch the round's Schedule votes from peers until ``deadline``."""
    held = {v.msg.validator for v in ctx.store.held(Schedule, rnd)}
    if not all(v.pubkey in held for v in ctx.cfg.validators):
        await ctx.sync.fetch_round(Kind.SCHEDULE, rnd, deadline=deadline)


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
    if ctx.clock.now() > at + 1.0:
        return  # too late to vote on it (a restart): the others' votes decide
    await ctx.clock.sleep_until(at - SUBMISSION_PULL)
    # Submissions travel by gossip: pull those of the round that peers hold and this node not,
    # from every peer (a client whose gossip reached no keeper holds the only copy).
    await ctx.sync.fetch_round(Kind.SUBMISSION, rnd, deadline=at, everyone=True)
    await ctx.clock.sleep_until(at)
    held = held_submissions(ctx.store, rnd)
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


def certified_shards(result: RoundResult, texts: tuple[str, ...], hint: range | None) -> list[int]:
    """The shard of each text in a certified result: one whose `result.texts` entry is the
    text's digest (the schedule's placement ``hint`` first, then the lowest unused one); empty
    if the result does not name every text."""
    out: list[int] = []
    for i, text in enumerate(texts):
        want = text_digest(" ".join(split_units(text)))
        first = [hint[i]] if hint is not None and i < len(hint) else []
        fits = [s for s in first + list(range(result.shards)) if 0 <= s < result.shards]
        found = next((s for s in fits if result.texts[s] == want and s not in out), None)
        if found is None:
            return []
        out.append(found)
    return out


def lookup(cfg: NetworkConfig, store: Store, mid: bytes, now: float) -> dict[str, Any] | None:
    """What a node answers about submission ``mid``: None if it does not hold it; else its
    state and, once its round is final, the proof. States: ``pending`` (before its round's
    schedule), ``not_scheduled`` (its round embeds other texts), ``scheduled`` (until the round
    is final), ``not_finalized``, ``final`` (every text has a certified, non-zero consensus
    embedding) and ``no_embedding`` (the round is final and names the texts, but the certified
    embedding of some text is the zero vector: no encoder's embedding of its shard was checked
    and weighted, e.g. fewer than min_encoders_for_lof voices; not a result). With a
    certificate: ``certificate`` (hex) and per text its ``shard``, ``float32_le_hex`` and
    ``empty``; ``schedule`` lists the Schedule votes counted (hex), for information only: the
    certificate alone proves the embeddings (`submissions.verify_answer`)."""
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
    cert = verified_certificate(store, cfg, rnd)
    if fixed is not None:
        out["schedule"] = [
            v.data.hex() for v in store.held(Schedule, rnd) if v.msg.validator in fixed.signers
        ]
    if cert is not None:
        shards = certified_shards(cert.result, sub.texts, where)
        if not shards:
            out["state"] = "not_scheduled"
            return out
        vectors = [cert.result.weighted[s] for s in shards]
        empty = [not any(v) for v in vectors]
        out["state"] = "no_embedding" if any(empty) else "final"
        out["shards"] = shards
        out["certificate"] = encode(cert).hex()
        out["embeddings"] = [
            {"text": text, "shard": shard, "float32_le_hex": vec.hex(), "empty": gap}
            for text, shard, vec, gap in zip(sub.texts, shards, vectors, empty, strict=True)
        ]
        return out
    if where is None:
        out["state"] = "pending" if now < schedule_time(cfg, rnd) + 5 else "not_scheduled"
        return out
    out["shards"] = list(where)
    held = store.round_outcomes(rnd, rnd)
    late = now > round_times(cfg, rnd).finality_deadline + 60
    out["state"] = "not_finalized" if (held and not held[0][1]) or late else "scheduled"
    return out
