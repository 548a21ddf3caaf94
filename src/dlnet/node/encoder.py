"""The encoder role: embed the round's shards, commit, then reveal. The adversaries a
testnet runs hook into it from node/adversaries.py (`Behaviour`)."""

from __future__ import annotations

import functools
import os

import numpy as np
import trio

from dlnet.node import adversaries
from dlnet.node import counters as C
from dlnet.node.commits import CommitGroup
from dlnet.node.context import NodeContext
from dlnet.node.models import Model, one_line
from dlnet.node.probing import PROBE_GRACE, held_probe, pull_probe
from dlnet.node.reveals import RETRY, REVEAL_DELAY, PushGroup
from dlnet.node.submissions import SCHEDULE_PULL, pull_schedule, scheduled_tasks
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.probes import probe_shard
from dlnet.protocol.rounds import RoundTimes, round_times
from dlnet.protocol.wire import (
    Commit,
    Embedding,
    Kind,
    Probe,
    encode,
    make_embedding,
    sign_commit,
)


class ModelError(Exception):
    """The encoder's model raised, or returned something that is not (n, dim) finite float32."""


class EncoderRole:
    def __init__(
        self,
        ctx: NodeContext,
        key: SigningKey,
        model: Model,
        behaviour: str = "honest",
        registration: int = 0,
        pushes: PushGroup | None = None,
        commits: CommitGroup | None = None,
    ) -> None:
        self.ctx = ctx
        # The process's identities push and commit together (`PushGroup`, `CommitGroup`);
        # alone, a group of one.
        self.pushes = pushes or PushGroup(ctx.host, ctx.ingest)
        self.commits = commits or CommitGroup(ctx.host, ctx.cfg.network_id)
        self.key = key
        self.registration = registration  # nonce of the key's registration proof
        self.model = model
        self.behaviour = adversaries.behaviour(behaviour)

    async def run(self, first_round: int) -> None:
        rnd = first_round
        while True:
            try:
                await self.run_round(rnd)
            except ModelError as exc:
                self.ctx.log.error("round %d: model error, no commit: %s", rnd, exc)
                self.ctx.ingest.count(C.ENCODER, "model_error")
            rnd += 1

    def _texts(self, rnd: int) -> list[str]:
        tasks = scheduled_tasks(self.ctx, rnd)
        return [text for task in tasks for text in task.texts]

    async def _embed(self, texts: list[str]) -> np.ndarray:
        # A model call takes seconds: run it in a worker thread so gossip keeps flowing.
        try:
            vecs = await self.ctx.offload(functools.partial(self.model.embed, texts))
        except Exception as exc:  # the operator's model failed: skip the round, keep running
            raise ModelError(f"embed() raised {one_line(exc)}") from exc
        dim = self.ctx.cfg.dim
        if not isinstance(vecs, np.ndarray) or vecs.shape != (len(texts), dim):
            shape = getattr(vecs, "shape", type(vecs).__name__)
            raise ModelError(f"model returned {shape}, expected ({len(texts)}, {dim})")
        out = np.ascontiguousarray(vecs, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelError("model returned non-finite values")
        return out

    async def _vectors(self, rnd: int, probe: Probe | None) -> np.ndarray:
        """One row per (shard, slot) in commit order, then one per half of the round's probe
        (if held), embedded in one call."""
        texts = self._texts(self.behaviour.source_round(rnd))
        vecs = await self._embed(texts + ([] if probe is None else list(probe.halves)))
        shards = self.behaviour.committed(self, vecs[: len(texts)])
        return np.concatenate([shards, vecs[len(texts) :]])

    def _sign_reveals(self, rnd: int, vecs: np.ndarray) -> list[Embedding]:
        """Row i is (shard i // slots, slot i % slots) up to the last shard, then the probe's
        halves under the probe shard, slot = position (protocol.round.probe_vectors)."""
        cfg = self.ctx.cfg
        slots, listed = cfg.slots_per_shard, cfg.shards_per_round * cfg.slots_per_shard
        return [
            make_embedding(
                self.key,
                cfg.network_id,
                rnd,
                i // slots if i < listed else probe_shard(cfg),
                i % slots if i < listed else i - listed,
                os.urandom(16),
                v,
            )
            for i, v in enumerate(vecs)
        ]

    def _stored_round(self, rnd: int) -> tuple[Commit, list[Embedding], list[bytes]] | None:
        """After a restart: this round's commit and reveals (with their bytes) as first made
        (never re-made, which would be equivocation)."""
        me = self.key.public_key
        commits = [v.msg for v in self.ctx.store.held(Commit, rnd) if v.msg.encoder == me]
        if not commits:
            return None
        held = {v.commitment: v for v in self.ctx.store.held(Embedding, rnd) if v.msg.encoder == me}
        mine = [held[h] for h in commits[0].hashes if h in held]
        return commits[0], [v.msg for v in mine], [v.data for v in mine]

    async def run_round(self, rnd: int) -> None:
        cfg = self.ctx.cfg
        times = round_times(cfg, rnd)
        # The round's texts follow its Schedule votes, and its probe is the prober's: pull
        # both, side by side, if gossip missed them.
        await self.ctx.clock.sleep_until(times.start - SCHEDULE_PULL)
        # An encoder that joins the round after it started (`runtime.first_round`) was not
        # subscribed when both went out: it asks for them for PROBE_GRACE from now.
        late = self.ctx.clock.now() > times.start
        until = self.ctx.clock.now() + PROBE_GRACE if late else times.start
        async with trio.open_nursery() as pulls:
            pulls.start_soon(pull_schedule, self.ctx, rnd, until)
            pulls.start_soon(pull_probe, self.ctx, rnd, until)
        await self.ctx.clock.sleep_until(times.start)
        # A probe missed is a round's score lost: keep asking a little into the commit phase
        # (an encoder that joined just before the round, or whose peers were not up yet).
        await pull_probe(self.ctx, rnd, max(until, times.start + PROBE_GRACE))
        probe = held_probe(self.ctx, rnd)
        stored = self._stored_round(rnd)
        if stored is not None:
            commit, reveals, items = stored
        else:
            vecs = await self._vectors(rnd, probe)
            reveals = self._sign_reveals(rnd, vecs)
            items = [encode(e) for e in reveals]
            hashes = tuple(e.commitment() for e in reveals)
            commit = sign_commit(self.key, cfg.network_id, rnd, hashes, self.registration)
            if self.ctx.clock.now() >= times.commit_deadline:
                self.ctx.log.warning("round %d: embedding finished after the commit deadline", rnd)
                self.ctx.ingest.count(C.ENCODER, "missed_commit_deadline")
                return
            with self.ctx.store.batch():  # one transaction for the round's reveals
                for emb, data, h in zip(reveals, items, hashes, strict=True):
                    # held (and served to repairers) only after the commit deadline
                    self.ctx.hold_own(Kind.EMBEDDING, emb, data, h)
            signed = self.ctx.hold_own(Kind.COMMIT, commit)
            if signed is not None:  # None: refused (halted, or signed another one before)
                await self.commits.publish(signed)
            self.ctx.log.info("round %d: committed to %d embeddings", rnd, len(commit.hashes))
        await self.ctx.clock.sleep_until(times.commit_deadline + REVEAL_DELAY)
        shown = await self.behaviour.revealed(self, rnd, reveals)
        if shown is not reveals:
            items = [encode(e) for e in shown]
        acked = await self._reveal(items, times)
        self.ctx.log.info(
            "round %d: revealed %d embeddings, held by %d peers", rnd, len(shown), acked
        )
        await self.behaviour.after_reveal(
            self, rnd, shown, functools.partial(self._reveal, times=times)
        )

    async def _reveal(self, items: list[bytes], times: RoundTimes) -> int:
        """Push the reveals to the connected peers that keep them (node/reveals.py), and
        again every RETRY seconds while none acknowledged them all, until shortly before the
        repair deadline (validators fetch what they lack until then; meanwhile peer upkeep
        dials other keepers). Gossip would reach no one a push cannot: its fanout goes to
        the same peers. Returns how many peers hold them."""
        ctx = self.ctx
        end = times.repair_deadline - RETRY
        acked = await self.pushes.push(items, end)
        while not acked and self.ctx.clock.now() + RETRY < end:
            ctx.ingest.count(C.ENCODER, "reveal_push_retried")
            await trio.sleep(RETRY)
            acked = await self.pushes.push(items, end)
        if not acked:
            ctx.ingest.count(C.ENCODER, "reveal_push_unacked")
        return acked
