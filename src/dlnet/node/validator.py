"""The validator role: repair, score, attest, agree, finalize — one round at a time, rounds
overlapping. Everything it decides is derived from the store, so a validator restarted at any
moment picks a round up where it stands and never signs two different things for one round.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import trio
from threadpoolctl import threadpool_limits

from dlnet.node import counters as C
from dlnet.node.byzantine import Byzantine
from dlnet.node.context import NodeContext
from dlnet.node.ingest import COMMIT_GRACE
from dlnet.node.probing import (
    LOOKBACK_FACTOR,
    PROBE_GRACE,
    ProbeLedger,
    grades,
    probe_inputs,
    pull_probe,
    pull_probe_key,
    run_prober,
)
from dlnet.node.report import verified_certificate
from dlnet.node.reveals import PUSH_SETTLE, REVEAL_DELAY
from dlnet.node.submissions import SCHEDULE_PULL, pull_schedule, scheduled_tasks, vote_schedule
from dlnet.protocol.consensus import (
    MissingCommits,
    MissingEmbeddings,
    attestation_ids,
    compute_result,
    finality_reached,
    precommit_set,
    quantise,
    result_problem,
    round_trips,
    usable_attestations,
)
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.influence import InfluenceState, scoring_round
from dlnet.protocol.masks import text_digests
from dlnet.protocol.probes import prober
from dlnet.protocol.registration import Registry, counted, records
from dlnet.protocol.result import RoundResult, decode_result, encode_result, result_digest
from dlnet.protocol.round import (
    RoundView,
    full_commitments,
    full_embeddings,
    messages_digest,
    scoring_inputs,
)
from dlnet.protocol.round import round_view as view_of
from dlnet.protocol.rounds import RoundTimes, round_times
from dlnet.protocol.scoring import RoundScores, score_round
from dlnet.protocol.wire import (
    PRECOMMIT,
    PREVOTE,
    Attestation,
    Certificate,
    Commit,
    Embedding,
    FinalityVote,
    Kind,
    Message,
    encode,
    sign_attestation,
    sign_vote,
)


def score_on_one_thread(*args: Any, **kwargs: Any) -> RoundScores:
    """`score_round` with BLAS and OpenMP on one thread. In a process that has run torch (an
    encoder beside the validator, or several identities), their thread pools made scoring's
    small SVDs 15-80x slower on 2 cores (docs/BENCHMARKS.md, "Test suite"); one thread is
    also one summation order."""
    with threadpool_limits(1):
        return score_round(*args, **kwargs)


# A validator that is not done scoring this long before the attest deadline stays silent
# for the round rather than attest late (a late attestation splits the validators' views).
ATTEST_MARGIN: Final = 2.0
# A validator pulls a round's commits from every connected peer this long before the commit
# deadline (s), and once more at it: what gossip delivered late or not at all is then held
# before the grace runs out. Pulled commits are not gossiped on, so a commit an encoder got
# only to some keepers spreads to the others by the later pulls (each keeper answers with
# every commit it holds); the early pulls also start its proof check early. At 100 encoders
# one pull 3 s before the deadline left the validators with 58-66 of 100 commits while the
# relay held all 100 (docs/BENCHMARKS.md, 100 x 7). With commits in bundles
# (node/commits.py) a third pull, 6 s before, then asking every keeper, cost the 7 validators
# ~0.15 CPU-s a round at 100 x 7 for what the other two bring.
COMMIT_PULLS: Final = (12.0, 3.0)
# The pulls before the deadline ask this many keepers, at random; the one at the deadline asks
# every keeper and every peer outside the commit topic (an encoder holds its own commit). A
# request costs each side ~3 ms of py-libp2p stream set-up: asking all 7 other keepers twice
# a round was most of an idle validator's CPU at 100 x 7.
EARLY_PULL_PEERS: Final = 3
# Pull-repair passes: how often a validator asks peers for what it still lacks.
REPAIR_INTERVAL: Final = 1.0
# How long after the finality deadline a validator keeps collecting votes.
FINALITY_GRACE: Final = 4.0
# Share of the finality phase after which a validator that has not yet seen every
# validator's prevote precommits with what it holds (PROTOCOL.md §5).
PRECOMMIT_AT: Final = 0.5
# How often a validator waiting for prevotes or precommits looks at the votes it holds (s).
PREVOTE_POLL: Final = 0.1
# Share of the finality phase the attestation pull before the prevote may take.
ATTESTATION_PULL: Final = 0.25
# How often a validator that attested looks for the others' attestations before the deadline.
ATTESTATION_POLL: Final = 0.1


def round_view(ctx: NodeContext, rnd: int) -> RoundView:
    """The round's view (`protocol.round.round_view`) from the verified messages the store
    holds in memory: nothing is decoded or verified again."""
    return view_of(
        ctx.store.held(Commit, rnd),
        ctx.store.held(Embedding, rnd),
        ctx.store.equivocators(rnd),
        ctx.cfg.slots_per_shard,
    )


class ValidatorRole:
    def __init__(
        self,
        ctx: NodeContext,
        key: SigningKey,
        byzantine: Byzantine | None = None,
        probe_source: Sequence[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.key = key
        # The texts this validator probes with when it is a round's prober (§2.8): the
        # operator's own (`--probe-texts`), else the network's data set.
        self.probe_source = probe_source
        self.probes = ProbeLedger()
        self.me = key.public_key
        self.byzantine = byzantine  # TEST-ONLY behaviour hooks (node/byzantine.py)
        self._certified: dict[int, RoundResult] = {}  # verified certificates' results, by round
        # Results computed, by (round, ids of the attestations used): a result is a function
        # of them and of reveals that no longer change once repair is over.
        self._results: dict[tuple[int, tuple[bytes, ...]], RoundResult] = {}
        # The attestation scored per round, with the inputs it was scored from: scoring ahead
        # of the reveal deadline (every reveal held) is reused if nothing changed by then.
        # Per round: the inputs last scored, the attestation and its cut cells by reason.
        self._scored: dict[int, tuple[tuple[object, ...], Attestation, Counter[str]]] = {}

    async def run(self, first_round: int) -> None:
        async with trio.open_nursery() as nursery:
            rnd = first_round
            while True:
                nursery.start_soon(self.run_round, rnd)
                if rnd == first_round:  # the first round's schedule is due before it starts
                    nursery.start_soon(vote_schedule, self.ctx, self.key, rnd)
                    nursery.start_soon(self._probe, rnd)
                nursery.start_soon(vote_schedule, self.ctx, self.key, rnd + 1)
                nursery.start_soon(self._probe, rnd + 1)
                rnd += 1
                await self.ctx.clock.sleep_until(round_times(self.ctx.cfg, rnd).start)

    async def _probe(self, rnd: int) -> None:
        """Round ``rnd``'s probe: made and published if this validator is its prober
        (`run_prober`); else pulled when encoders start asking for it (they ask validators
        and relays, and a prober cut off from its peers when it published reaches them only
        through such a pull)."""
        if prober(self.ctx.cfg, rnd) == self.me:
            source = self.ctx.items if self.probe_source is None else self.probe_source
            await run_prober(self.ctx, self.key, rnd, source, self.byzantine)
            return
        start = round_times(self.ctx.cfg, rnd).start
        await self.ctx.clock.sleep_until(start - SCHEDULE_PULL)
        await pull_probe(self.ctx, rnd, start + PROBE_GRACE)

    async def run_round(self, rnd: int) -> None:
        ctx = self.ctx
        if any(r == rnd for r, _, _ in ctx.store.round_outcomes()):
            return  # settled before a restart
        times = round_times(ctx.cfg, rnd)
        # Gossip is best-effort: pull the commits too, before the deadline's grace runs out
        # (a commit first held after it never counts, ingest.COMMIT_GRACE).
        pull_at = [times.commit_deadline - lead for lead in COMMIT_PULLS]
        for at, until in zip(pull_at, [*pull_at[1:], times.commit_deadline], strict=True):
            if ctx.clock.now() < until:  # a validator that started late skips what passed
                await ctx.clock.sleep_until(at)
                await ctx.sync.fetch_round(Kind.COMMIT, rnd, deadline=until, most=EARLY_PULL_PEERS)
        await ctx.clock.sleep_until(times.commit_deadline)
        # The last pull asks the encoders too: one whose gossip reached no keeper holds its own.
        await ctx.sync.fetch_round(
            Kind.COMMIT, rnd, deadline=times.commit_deadline + COMMIT_GRACE, everyone=True
        )
        # Encoders push their reveals to validators and relays (node/reveals.py), each to the
        # ones it is connected to: fetch the rest from them by commitment as soon as the
        # pushes are in, so that the reveals are all held by the reveal deadline.
        await ctx.clock.sleep_until(
            min(times.reveal_deadline, times.commit_deadline + REVEAL_DELAY + PUSH_SETTLE)
        )
        async with trio.open_nursery() as pulls:
            # The round's texts (scoring, the result's `texts`) follow its Schedule votes.
            pulls.start_soon(pull_schedule, ctx, rnd, times.reveal_deadline + SCHEDULE_PULL)
            # The round's probe and key, if gossip missed them (grading needs both).
            pulls.start_soon(pull_probe_key, ctx, rnd, times.reveal_deadline)
            await self.repair(rnd, times.reveal_deadline)
            if ctx.clock.now() < times.reveal_deadline and not round_view(ctx, rnd).missing():
                # Every reveal is held: score now, so that the attestation can leave at the
                # deadline (it is scored again only if something arrives until then).
                await self.score(rnd)
            # Never attest before the reveal deadline: a reveal may be published until then.
            await ctx.clock.sleep_until(times.reveal_deadline)
            await self.repair(rnd, times.repair_deadline)
        view = round_view(ctx, rnd)
        ctx.log.info(
            "round %d: %d commits, %d reveals missing after repair",
            rnd,
            len(view.commits),
            len(view.missing()),
        )
        # Attest as soon as every committed reveal is held (or the repair deadline passed).
        await self.attest(rnd, times)
        if self.byzantine is not None and not self.byzantine.votes:
            return
        # Prevote as soon as every validator's attestation is held (no later one can change
        # the set), else at the attest deadline after one more pull.
        while not self._all_attested(rnd) and ctx.clock.now() < times.attest_deadline:
            await trio.sleep(
                min(ATTESTATION_POLL, max(0.0, times.attest_deadline - ctx.clock.now()))
            )
        if not self._all_attested(rnd):
            phase = times.finality_deadline - times.attest_deadline
            await ctx.sync.fetch_round(
                Kind.ATTESTATION, rnd, deadline=times.attest_deadline + ATTESTATION_PULL * phase
            )
        prevoted = await self.prevote(rnd, times)
        await self.finalize(rnd, times, prevoted)

    async def repair(self, rnd: int, deadline: float) -> None:
        """Fetch by commitment every listed reveal still missing, until none is or time is up;
        never past ``deadline``."""
        while self.ctx.clock.now() < deadline:
            missing = round_view(self.ctx, rnd).missing()
            if not missing:
                return
            await self.ctx.sync.fetch_commitments(missing, deadline=deadline)
            await trio.sleep(max(0.0, min(REPAIR_INTERVAL, deadline - self.ctx.clock.now())))

    def _own(self, kind: Kind, rnd: int, phase: int | None = None) -> Message | None:
        held: list[Attestation | FinalityVote] = (
            [v.msg for v in self.ctx.store.held(Attestation, rnd)]
            if kind is Kind.ATTESTATION
            else [v.msg for v in self.ctx.store.held(FinalityVote, rnd)]
        )
        for msg in held:
            if msg.validator == self.me and (
                phase is None or (isinstance(msg, FinalityVote) and msg.phase == phase)
            ):
                return msg
        return None

    def records(self, rnd: int) -> tuple[InfluenceState, Registry]:
        """The earned influence and the registered set round ``rnd`` is scored with: genesis
        seeds plus every certified round <= rnd - lag this node holds (docs/PROTOCOL.md §2.6
        and §2.7). A node that catches up stores the same certificates, so it derives the
        same state."""
        cfg = self.ctx.cfg
        upto = scoring_round(rnd)
        for r in self.ctx.store.certificate_rounds(1, upto):
            if r not in self._certified and (cert := verified_certificate(self.ctx.store, cfg, r)):
                self._certified[r] = cert.result
        return records(cfg.seed_encoders, self._certified.values(), upto, cfg.registration)

    def influence(self, rnd: int) -> InfluenceState:
        """The earned influence round ``rnd`` is scored with (see `records`)."""
        return self.records(rnd)[0]

    def scored_encoders(self, rnd: int, view: RoundView, registry: Registry) -> tuple[bytes, ...]:
        """The committed encoders this round scores: the registered ones and as many
        newcomers as the set has room for (`registration.counted`); the others are left out
        of the attestation (`score` counts them as ``validator:unregistered``)."""
        proofs = self.ctx.ingest.proofs
        members = registry.keys()
        work = {
            enc: proofs.work(enc, c.registration)
            if enc not in members and self.ctx.cfg.registration.difficulty > 0
            else bytes(32)
            for enc, c in view.commits.items()
        }
        return counted(registry, rnd, work, self.ctx.cfg.registration)

    async def score(self, rnd: int) -> Attestation:
        """Score every committed encoder on every shard from what this validator holds.

        Inputs are read from the store here, on the trio thread (the store's connection is
        used only from it); only the pure computation, ``score_round``, runs in a worker
        thread, on plain arrays."""
        cfg = self.ctx.cfg
        view = round_view(self.ctx, rnd)
        tasks = scheduled_tasks(self.ctx, rnd)
        influence, registry = self.records(rnd)
        encoders = list(self.scored_encoders(rnd, view, registry))
        factors = await self.probe_factors(rnd, view, encoders)
        inputs = (
            view.used_ids,
            view.equivocators,
            tuple(encoders),
            tuple(sorted(influence.as_dict().items())),
            text_digests(tasks),
            None if factors is None else tuple(sorted(factors.items())),
        )
        cached = self._scored.get(rnd)
        if cached is not None and cached[0] == inputs:
            return cached[1]
        for _ in range(len(view.commits) - len(encoders)):
            self.ctx.ingest.count(C.VALIDATOR, "unregistered")
        shards = scoring_inputs(view, encoders, cfg.shards_per_round, cfg.slots_per_shard)
        scores = await self.ctx.offload(
            functools.partial(
                score_on_one_thread,
                cfg.scoring,
                shards,
                [t.unit_counts for t in tasks],
                tuple(encoders),
                influence=influence.as_dict(),
                probe=factors,
            )
        )
        matrix = np.array([[quantise(float(s)) for s in row] for row in scores.scores], dtype="<u2")
        self._record_reveals(rnd, view)
        att = sign_attestation(
            self.key,
            cfg.network_id,
            rnd,
            tuple(encoders),
            matrix.tobytes(),
            bytes(int(bool(o)) for row in scores.outliers for o in row),
            messages_digest(view),
        )
        oldest = rnd - cfg.timing.round_window - 1
        self._scored = {r: v for r, v in self._scored.items() if r >= oldest}
        cut = Counter(str(why) for row in scores.cut for why in row if why is not None)
        self._scored[rnd] = (inputs, att, cut)
        return att

    async def probe_factors(
        self, rnd: int, view: RoundView, encoders: Sequence[bytes]
    ) -> dict[bytes, float] | None:
        """The probe factor of each of ``encoders`` for round ``rnd`` (None: probes are off),
        after grading every probe of the look-back whose key is now held and that is not graded
        yet, and this round's again (its reveals may have grown since)."""
        cfg = self.ctx.cfg
        window = cfg.scoring.probe_window
        if not cfg.scoring.probe_texts:
            return None
        skipped: set[bytes] = set()
        for r in range(max(0, rnd - LOOKBACK_FACTOR * window + 1), rnd + 1):
            if r != rnd and self.probes.has(r):
                continue
            inputs = probe_inputs(self.ctx, view if r == rnd else round_view(self.ctx, r), r)
            if inputs is None:
                # This round's key may have lost its standing since it was graded (evidence
                # of its prober equivocating came in).
                self.probes.forget(r)
                continue
            graded = await self.ctx.offload(functools.partial(grades, inputs))
            who = prober(cfg, r)
            assert who is not None  # probes are on
            self.probes.record(r, who, graded)
            if r == rnd:  # committed without the probe's halves: not graded, 0 this round
                skipped = set(encoders) - graded.keys()
        factors = self.probes.factors(rnd, encoders, window)
        return {e: 0.0 if e in skipped else f for e, f in factors.items()}

    def _record_reveals(self, rnd: int, view: RoundView) -> None:
        """Per encoder: reveals its commit listed, and how many this validator held."""
        counts = {
            enc.hex(): {
                "expected": len(c.hashes),
                "held": view.held(enc),
                "equivocated": enc in view.equivocators,
            }
            for enc, c in view.commits.items()
        }
        self.ctx.store.put_round_state(rnd, "reveals", json.dumps(counts).encode())

    async def attest(self, rnd: int, times: RoundTimes) -> None:
        ctx = self.ctx
        own = self._own(Kind.ATTESTATION, rnd)
        if own is not None:  # restarted after attesting: re-send, never re-score
            await ctx.republish(Kind.ATTESTATION, own)
            return
        if ctx.clock.now() > times.attest_deadline - ATTEST_MARGIN:
            ctx.ingest.count(C.VALIDATOR, "missed_attest_deadline")
            return
        att = await self.score(rnd)
        if self.byzantine is not None:
            att = self.byzantine.attestation(ctx.cfg, self.key, att)
            at = self.byzantine.attest_at(times)
            if at is not None:
                await ctx.clock.sleep_until(at)
        await ctx.publish(Kind.ATTESTATION, att)
        cut = self._scored[rnd][2]
        for why, n in sorted(cut.items()):
            ctx.ingest.counters.add(C.CELLS_CUT, why, n)
        ctx.log.info(
            "round %d: attested %d encoders; cells cut: %s",
            rnd,
            len(att.encoders),
            ", ".join(f"{why} {n}" for why, n in sorted(cut.items())) or "none",
        )

    def _all_attested(self, rnd: int) -> bool:
        """Whether an attestation of every validator of the config is held."""
        held = {a.validator for a in self._attestations(rnd).values()}
        return held >= {v.pubkey for v in self.ctx.cfg.validators}

    def _attestations(self, rnd: int) -> dict[bytes, Attestation]:
        """The round's attestations held, by message id: one per validator (the first held),
        none from a validator that equivocated."""
        equivocators = self.ctx.store.equivocators(rnd)
        seen: set[bytes] = set()
        out: dict[bytes, Attestation] = {}
        for v in self.ctx.store.held(Attestation, rnd):
            if v.msg.validator not in equivocators and v.msg.validator not in seen:
                seen.add(v.msg.validator)
                out[v.id] = v.msg
        return out

    async def result(
        self, rnd: int, ids: tuple[bytes, ...] | None, deadline: float
    ) -> tuple[RoundResult, tuple[bytes, ...]] | None:
        """The round result over the attestations ``ids`` (None: every usable one held),
        fetching what it lacks until ``deadline``, with the ids of the attestations it used;
        None when this validator must not sign it:
        attestations or commits it cannot get, an empty result, attestations from too little
        stake, or a result that does not survive encode/decode (counted by reason)."""
        ctx = self.ctx
        held = self._attestations(rnd)
        if ids is not None and not all(i in held for i in ids):
            await ctx.sync.fetch_round(Kind.ATTESTATION, rnd, deadline=deadline)
            held = self._attestations(rnd)
            if not all(i in held for i in ids):
                ctx.ingest.count(C.VALIDATOR, "missing_attestations")
                return None
        atts = list(held.values()) if ids is None else [held[i] for i in ids]
        used = attestation_ids(usable_attestations(ctx.cfg, rnd, atts))
        if ids is not None and used != ids:
            ctx.ingest.count(C.VALIDATOR, "unusable_attestations")
            return None
        # The precommit is most often over the set the prevote used: computed once.
        cached = self._results.get((rnd, used))
        if cached is not None:
            return cached, used
        result = await self._compute(rnd, atts, deadline)
        if result is None:
            return None
        problem = result_problem(ctx.cfg, result)
        if problem is not None:
            ctx.ingest.count(C.VALIDATOR, f"no_result_{problem.reason.value}")
            return None
        if not round_trips(ctx.cfg, result):
            ctx.ingest.count(C.VALIDATOR, "no_result_round_trip")
            return None
        oldest = rnd - ctx.cfg.timing.round_window - 1
        self._results = {k: v for k, v in self._results.items() if k[0] >= oldest}
        self._results[(rnd, used)] = result
        return result, used

    async def _compute(
        self, rnd: int, atts: list[Attestation], deadline: float
    ) -> RoundResult | None:
        ctx = self.ctx
        for _ in range(3):
            view = round_view(ctx, rnd)
            # An equivocator's commit is held all the same (its scores are 0): the result
            # names it whenever attestations of κ of the stake list it.
            committed = set(view.commits)
            try:
                texts = text_digests(scheduled_tasks(ctx, rnd))
                fulls = full_embeddings(view, ctx.cfg.shards_per_round, ctx.cfg.slots_per_shard)
                return compute_result(ctx.cfg, rnd, atts, fulls, committed, texts=texts)
            except MissingCommits:
                # A commit first held after its grace never counts (ingest): abstain.
                ctx.ingest.count(C.VALIDATOR, "no_result_missing_commit")
                return None
            except MissingEmbeddings as exc:
                wanted = full_commitments(view, exc.missing, ctx.cfg.slots_per_shard)
                await ctx.sync.fetch_commitments(wanted, deadline=deadline)
                if ctx.clock.now() >= deadline:
                    break
        ctx.ingest.count(C.VALIDATOR, "no_result_missing_embeddings")
        return None

    async def _vote(self, rnd: int, phase: int, ids: tuple[bytes, ...] | None) -> bool:
        """Compute the result over ``ids`` and publish this validator's vote of ``phase``;
        whether it voted."""
        ctx = self.ctx
        times = round_times(ctx.cfg, rnd)
        if ctx.clock.now() >= times.finality_deadline:
            # The others have stopped counting votes: a late one could only finalize, at
            # some nodes, a round the rest recorded as not finalized.
            ctx.ingest.count(C.VALIDATOR, "missed_vote_deadline")
            return False
        computed = await self.result(rnd, ids, times.finality_deadline)
        if computed is None:
            return False
        result, used = computed
        digest = result_digest(result)
        named: tuple[bytes, ...] = used if phase == PREVOTE else ()
        if phase == PRECOMMIT:
            ctx.store.put_round_state(rnd, "result", encode_result(result))
        vote = sign_vote(self.key, ctx.cfg.network_id, rnd, digest, phase=phase, attestations=named)
        await ctx.publish(Kind.VOTE, vote)
        ctx.log.info(
            "round %d: %s for result %s",
            rnd,
            "prevoted" if phase == PREVOTE else "precommitted",
            digest.hex()[:16],
        )
        return True

    async def prevote(self, rnd: int, times: RoundTimes) -> bool:
        """Phase 0: name the attestation set held and the result over it; whether it did."""
        own = self._own(Kind.VOTE, rnd, PREVOTE)
        if own is not None:
            await self.ctx.republish(Kind.VOTE, own)
            return True
        return await self._vote(rnd, PREVOTE, None)

    def _votes(self, rnd: int, phase: int) -> list[FinalityVote]:
        """One vote of ``phase`` per validator (the first held), none from an equivocator."""
        equivocators = self.ctx.store.equivocators(rnd)
        votes: dict[bytes, FinalityVote] = {}
        for v in self.ctx.store.held(FinalityVote, rnd):
            if v.msg.phase == phase and v.msg.validator not in equivocators:
                votes.setdefault(v.msg.validator, v.msg)
        return [votes[v] for v in sorted(votes)]

    async def precommit(self, rnd: int) -> None:
        """Phase 1: vote for the result over the attestation set `precommit_set` picks."""
        own = self._own(Kind.VOTE, rnd, PRECOMMIT)
        if own is not None:
            await self.ctx.republish(Kind.VOTE, own)
            return
        prevotes = self._votes(rnd, PREVOTE)
        mine = next((v.attestations for v in prevotes if v.validator == self.me), None)
        chosen = precommit_set(self.ctx.cfg, prevotes, mine)
        if chosen is None:
            self.ctx.ingest.count(C.VALIDATOR, "no_precommit_set")
            return
        if chosen != mine:
            self.ctx.ingest.count(C.VALIDATOR, "precommit_other_set")
        await self._vote(rnd, PRECOMMIT, chosen)

    async def finalize(self, rnd: int, times: RoundTimes, prevoted: bool) -> None:
        """Prevote again until the precommit time if it could not yet (too few attestations
        held: they may still arrive); precommit once every validator's prevote is held (or at
        the precommit time), then
        assemble the certificate as soon as MORE than the finality fraction of the stake
        precommitted our result; at the end of the grace, record the round as not finalized
        (never a guess)."""
        ctx = self.ctx
        precommit_at = times.attest_deadline + PRECOMMIT_AT * (
            times.finality_deadline - times.attest_deadline
        )
        end = times.finality_deadline + FINALITY_GRACE
        precommitted = False
        # Gossip brings the votes first; a validator that could not prevote retries sooner.
        next_pull = ctx.clock.now() + (REPAIR_INTERVAL if prevoted else PREVOTE_POLL)
        while True:
            if not precommitted and (
                ctx.clock.now() >= precommit_at
                or {v.validator for v in self._votes(rnd, PREVOTE)}
                >= {v.pubkey for v in ctx.cfg.validators}
            ):
                await self.precommit(rnd)
                precommitted = True
            raw = ctx.store.get_round_state(rnd, "result")
            result = decode_result(raw) if raw is not None else None
            if result is not None:
                cert = self._certificate(rnd, result)
                if cert is not None:
                    ctx.store.put_certificate(rnd, encode(cert))
                    ctx.store.put_round_outcome(rnd, True, result_digest(result))
                    ctx.store.put_finalized_at(rnd, ctx.clock.now(), times)
                    ctx.log.info("round %d: finalized, %d votes", rnd, len(cert.votes))
                    return
            now = ctx.clock.now()
            if now >= end:
                break
            # Look again soon (the precommit never past its time), and pull the votes from
            # peers about once a second, each pull bounded by a second.
            wake = min(end, now + PREVOTE_POLL)
            if not precommitted:
                wake = min(wake, precommit_at)
            if now >= next_pull:
                pull_until = min(end, now + REPAIR_INTERVAL)
                if not (prevoted or precommitted):
                    await ctx.sync.fetch_round(Kind.ATTESTATION, rnd, deadline=pull_until)
                    prevoted = await self.prevote(rnd, times)
                await ctx.sync.fetch_round(Kind.VOTE, rnd, deadline=pull_until)
                next_pull = ctx.clock.now() + (REPAIR_INTERVAL if prevoted else 2 * PREVOTE_POLL)
            await ctx.clock.sleep_until(wake)
        ctx.store.put_round_outcome(rnd, False, None if result is None else result_digest(result))
        ctx.log.warning("round %d: not finalized (no 2/3 of the stake on one result)", rnd)

    def _certificate(self, rnd: int, result: RoundResult) -> Certificate | None:
        cfg = self.ctx.cfg
        digest = result_digest(result)
        votes = [v for v in self._votes(rnd, PRECOMMIT) if v.result_digest == digest]
        if not finality_reached(cfg, sum(cfg.stake_of(v.validator) for v in votes)):
            return None
        return Certificate(
            cfg.network_id, rnd, result, tuple((v.validator, v.signature) for v in votes)
        )
