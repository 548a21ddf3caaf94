"""The validator role: repair, score, attest, agree, finalize — one round at a time, rounds
overlapping. Everything it decides is derived from the store, so a validator restarted at any
moment picks a round up where it stands and never signs two different things for one round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

import numpy as np
import trio

from dlnet.node.context import NodeContext, sleep_until, wall_clock
from dlnet.protocol.consensus import MissingEmbeddings, compute_result, quantise
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.masks import round_tasks
from dlnet.protocol.result import RoundResult, decode_result, encode_result, result_digest
from dlnet.protocol.rounds import round_times
from dlnet.protocol.scoring import score_round
from dlnet.protocol.wire import (
    Attestation,
    Certificate,
    Commit,
    Embedding,
    FinalityVote,
    Kind,
    Message,
    decode,
    encode,
    message_id,
    sign_attestation,
    sign_vote,
)

# A validator that is not done scoring this long before the attest deadline stays silent
# for the round rather than attest late (a late attestation splits the validators' views).
ATTEST_MARGIN: Final = 2.0
# The first pull of a round's commits is this long before the commit deadline, the second
# at it: what gossip delivered late or not at all is then held before the grace runs out.
COMMIT_PULL_LEAD: Final = 3.0
# Pull-repair passes: how often a validator asks peers for what it still lacks.
REPAIR_INTERVAL: Final = 1.0
# How long after the finality deadline a validator keeps collecting votes.
FINALITY_GRACE: Final = 4.0


@dataclass(frozen=True)
class RoundView:
    """What a validator holds for a round, restricted to what counts."""

    commits: dict[bytes, Commit]  # encoder -> its one commit
    reveals: dict[bytes, Embedding]  # commitment -> reveal matching it
    equivocators: frozenset[bytes]
    used_ids: tuple[bytes, ...]  # message ids of the commits and reveals used, sorted

    def missing(self) -> list[bytes]:
        return [
            h
            for enc, c in sorted(self.commits.items())
            if enc not in self.equivocators
            for h in c.hashes
            if h not in self.reveals
        ]


def _decoded(ctx: NodeContext, kind: Kind, rnd: int) -> list[tuple[bytes, Message]]:
    return [(message_id(d), decode(d, ctx.cfg, kind)) for d in ctx.store.messages(kind, rnd)]


def round_view(ctx: NodeContext, rnd: int) -> RoundView:
    commits: dict[bytes, Commit] = {}
    ids: dict[bytes, bytes] = {}
    for mid, msg in _decoded(ctx, Kind.COMMIT, rnd):
        assert isinstance(msg, Commit)
        if msg.encoder not in commits:  # a second commit is equivocation evidence
            commits[msg.encoder] = msg
            ids[msg.encoder] = mid
    wanted = {h: enc for enc, c in commits.items() for h in c.hashes}
    reveals: dict[bytes, Embedding] = {}
    used = list(ids.values())
    for mid, msg in _decoded(ctx, Kind.EMBEDDING, rnd):
        assert isinstance(msg, Embedding)
        h = msg.commitment()
        if wanted.get(h) == msg.encoder and h not in reveals:
            reveals[h] = msg
            used.append(mid)
    equivocators = frozenset(ctx.store.equivocators(rnd))
    return RoundView(commits, reveals, equivocators, tuple(sorted(used)))


class ValidatorRole:
    def __init__(self, ctx: NodeContext, key: SigningKey) -> None:
        self.ctx = ctx
        self.key = key
        self.me = key.public_key

    async def run(self, first_round: int) -> None:
        async with trio.open_nursery() as nursery:
            rnd = first_round
            while True:
                nursery.start_soon(self.run_round, rnd)
                rnd += 1
                await sleep_until(round_times(self.ctx.cfg, rnd).start)

    async def run_round(self, rnd: int) -> None:
        ctx = self.ctx
        if any(r == rnd for r, _, _ in ctx.store.round_outcomes()):
            return  # settled before a restart
        times = round_times(ctx.cfg, rnd)
        # Gossip is best-effort: pull the commits too, before the deadline's grace runs out
        # (a commit first held after it never counts, ingest.COMMIT_GRACE).
        for at in (times.commit_deadline - COMMIT_PULL_LEAD, times.commit_deadline):
            await sleep_until(at)
            await ctx.sync.fetch_round(Kind.COMMIT, rnd)
        await sleep_until(times.reveal_deadline)
        await self.repair(rnd, times.repair_deadline)
        view = round_view(ctx, rnd)
        ctx.log.info(
            "round %d: %d commits, %d reveals missing after repair",
            rnd,
            len(view.commits),
            len(view.missing()),
        )
        await sleep_until(times.repair_deadline)
        await self.attest(rnd, times.attest_deadline)
        await sleep_until(times.attest_deadline)
        await ctx.sync.fetch_round(Kind.ATTESTATION, rnd)
        await self.vote(rnd)
        await sleep_until(times.finality_deadline)
        await self.finalize(rnd, times.finality_deadline + FINALITY_GRACE)

    async def repair(self, rnd: int, deadline: float) -> None:
        """Fetch by commitment every listed reveal still missing, until none is or time is up."""
        while wall_clock() < deadline:
            missing = round_view(self.ctx, rnd).missing()
            if not missing:
                return
            await self.ctx.sync.fetch_commitments(missing)
            await trio.sleep(REPAIR_INTERVAL)

    def _own(self, kind: Kind, rnd: int) -> Message | None:
        for _, msg in _decoded(self.ctx, kind, rnd):
            signer = msg.validator if isinstance(msg, Attestation | FinalityVote) else None
            if signer == self.me:
                return msg
        return None

    def score(self, rnd: int) -> Attestation:
        """Score every committed encoder on every shard from what this validator holds."""
        cfg = self.ctx.cfg
        view = round_view(self.ctx, rnd)
        tasks = round_tasks(cfg, self.ctx.items, rnd)
        encoders = sorted(view.commits)
        slots = cfg.slots_per_shard
        shards: list[dict[bytes, np.ndarray]] = []
        for shard in range(cfg.shards_per_round):
            held: dict[bytes, np.ndarray] = {}
            for enc in encoders:
                if enc in view.equivocators:
                    continue
                hashes = view.commits[enc].hashes[shard * slots : (shard + 1) * slots]
                if all(h in view.reveals for h in hashes):
                    held[enc] = np.stack([view.reveals[h].array() for h in hashes])
            shards.append(held)
        scores = score_round(cfg.scoring, shards, [t.unit_counts for t in tasks], tuple(encoders))
        matrix = np.array([[quantise(float(s)) for s in row] for row in scores.scores], dtype="<u2")
        self._record_reveals(rnd, view)
        return sign_attestation(
            self.key,
            cfg.network_id,
            rnd,
            tuple(encoders),
            matrix.tobytes(),
            bytes(int(bool(o)) for row in scores.outliers for o in row),
            hashlib.sha256(b"".join(view.used_ids)).digest(),
        )

    def _record_reveals(self, rnd: int, view: RoundView) -> None:
        """Per encoder: reveals its commit listed, and how many this validator held."""
        counts = {
            enc.hex(): {
                "expected": len(c.hashes),
                "held": sum(h in view.reveals for h in c.hashes),
                "equivocated": enc in view.equivocators,
            }
            for enc, c in view.commits.items()
        }
        self.ctx.store.put_round_state(rnd, "reveals", json.dumps(counts).encode())

    async def attest(self, rnd: int, deadline: float) -> None:
        ctx = self.ctx
        own = self._own(Kind.ATTESTATION, rnd)
        if own is not None:  # restarted after attesting: re-send, never re-score
            await ctx.republish(Kind.ATTESTATION, own)
            return
        if wall_clock() > deadline - ATTEST_MARGIN:
            ctx.ingest.count("validator", "missed_attest_deadline")
            return
        att = await trio.to_thread.run_sync(self.score, rnd)
        await ctx.publish(Kind.ATTESTATION, att)
        ctx.log.info("round %d: attested %d encoders", rnd, len(att.encoders))

    def _attestations(self, rnd: int) -> list[Attestation]:
        equivocators = self.ctx.store.equivocators(rnd)
        seen: set[bytes] = set()
        out: list[Attestation] = []
        for _, msg in _decoded(self.ctx, Kind.ATTESTATION, rnd):
            assert isinstance(msg, Attestation)
            if msg.validator not in equivocators and msg.validator not in seen:
                seen.add(msg.validator)
                out.append(msg)
        return out

    def _fulls(self, rnd: int) -> dict[tuple[int, bytes], np.ndarray]:
        view = round_view(self.ctx, rnd)
        slots = self.ctx.cfg.slots_per_shard
        out: dict[tuple[int, bytes], np.ndarray] = {}
        for enc, c in view.commits.items():
            for shard in range(self.ctx.cfg.shards_per_round):
                h = c.hashes[shard * slots]
                if h in view.reveals:
                    out[(shard, enc)] = view.reveals[h].array()
        return out

    async def result(self, rnd: int) -> RoundResult | None:
        """The round result from the attestations held; fetches full embeddings it lacks."""
        for _ in range(3):
            try:
                return compute_result(self.ctx.cfg, rnd, self._attestations(rnd), self._fulls(rnd))
            except MissingEmbeddings as exc:
                view = round_view(self.ctx, rnd)
                slots = self.ctx.cfg.slots_per_shard
                wanted = [
                    view.commits[enc].hashes[shard * slots]
                    for shard, enc in exc.missing
                    if enc in view.commits
                ]
                await self.ctx.sync.fetch_commitments(wanted)
        return None

    async def vote(self, rnd: int) -> None:
        ctx = self.ctx
        own = self._own(Kind.VOTE, rnd)
        if own is not None:
            await ctx.republish(Kind.VOTE, own)
            return
        if wall_clock() >= round_times(ctx.cfg, rnd).finality_deadline:
            # The others have stopped counting votes: a late one could only finalize, at
            # some nodes, a round the rest recorded as not finalized.
            ctx.ingest.count("validator", "missed_vote_deadline")
            return
        result = await self.result(rnd)
        if result is None:
            ctx.ingest.count("validator", "no_result")
            return
        digest = result_digest(result)
        ctx.store.put_round_state(rnd, "result", encode_result(result))
        await ctx.publish(Kind.VOTE, sign_vote(self.key, ctx.cfg.network_id, rnd, digest))
        ctx.log.info("round %d: voted for result %s", rnd, digest.hex()[:16])

    def _votes_for(self, rnd: int, digest: bytes) -> list[FinalityVote]:
        votes: dict[bytes, FinalityVote] = {}
        for _, msg in _decoded(self.ctx, Kind.VOTE, rnd):
            assert isinstance(msg, FinalityVote)
            if msg.result_digest == digest:
                votes.setdefault(msg.validator, msg)
        return [votes[v] for v in sorted(votes)]

    async def finalize(self, rnd: int, deadline: float) -> None:
        """Assemble the certificate once > 2/3 of the stake signed our digest; else record the
        round as not finalized (never a guess)."""
        ctx = self.ctx
        raw = ctx.store.get_round_state(rnd, "result")
        result = decode_result(raw) if raw is not None else None
        while True:
            await ctx.sync.fetch_round(Kind.VOTE, rnd)
            if result is not None:
                cert = self._certificate(rnd, result)
                if cert is not None:
                    ctx.store.put_certificate(rnd, encode(cert))
                    ctx.store.put_round_outcome(rnd, True, result_digest(result))
                    ctx.log.info("round %d: finalized, %d votes", rnd, len(cert.votes))
                    return
            if wall_clock() >= deadline:
                break
            await trio.sleep(REPAIR_INTERVAL)
        ctx.store.put_round_outcome(rnd, False, None if result is None else result_digest(result))
        ctx.log.warning("round %d: not finalized (no 2/3 of the stake on one result)", rnd)

    def _certificate(self, rnd: int, result: RoundResult) -> Certificate | None:
        cfg = self.ctx.cfg
        votes = self._votes_for(rnd, result_digest(result))
        signed = sum(cfg.stake_of(v.validator) for v in votes)
        if 3 * signed <= 2 * cfg.total_stake:
            return None
        return Certificate(
            cfg.network_id, rnd, result, tuple((v.validator, v.signature) for v in votes)
        )
