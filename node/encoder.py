"""The encoder role: embed the round's shards, commit, then reveal.

Besides the honest behaviour this module holds the adversaries a testnet runs, each of which
the protocol must defeat (see docs/PROTOCOL.md, "Cheats"):

* ``fabricated`` — honest full and mask embeddings, inverse forged as full - mask (DL = 0);
  ``fabricated@JITTER`` adds a random vector of norm JITTER x ||full|| (DL about JITTER), so
  the inverse is no longer too exact;
* ``copycat`` — commits to junk, then reveals other encoders' embeddings re-signed as its own;
* ``replay`` — reveals, re-signed for this round, embeddings made for the previous round's
  shards, and re-sends its earlier rounds' messages verbatim;
* ``equivocator`` — reveals two different signed embeddings for every slot.
"""

from __future__ import annotations

import os
from typing import Final

import numpy as np
import trio

from dlnet.node import counters as C
from dlnet.node.context import NodeContext, sleep_until, wall_clock
from dlnet.node.models import Model, one_line
from dlnet.node.models.kinds import fabricate_inverse, jitter_option
from dlnet.node.reveals import RETRY, REVEAL_DELAY, push_reveals
from dlnet.node.submissions import SCHEDULE_PULL, pull_schedule, scheduled_tasks
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.rounds import RoundTimes, round_times
from dlnet.protocol.wire import (
    Commit,
    Embedding,
    Kind,
    decode,
    encode,
    make_embedding,
    sign_commit,
    topic,
)

BEHAVIOURS: Final = ("honest", "fabricated", "copycat", "replay", "equivocator")
# How long a copycat listens to other encoders' reveals before copying them.
COPY_WAIT: Final = 3.0


class ModelError(Exception):
    """The encoder's model raised, or returned something that is not (n, dim) finite float32."""


def parse_behaviour(text: str) -> tuple[str, float]:
    """``NAME`` (one of BEHAVIOURS) or ``fabricated@JITTER``: the behaviour and the jitter of
    its fabricated inverses (0 unless given). ValueError, one line, on anything else."""
    name, at, level = text.partition("@")
    if name not in BEHAVIOURS:
        raise ValueError(f"unknown encoder behaviour {name!r}; behaviours: {', '.join(BEHAVIOURS)}")
    if not at:
        return name, 0.0
    if name != "fabricated":
        raise ValueError(f"behaviour {name} takes no @level")
    return name, jitter_option(level)


class EncoderRole:
    def __init__(
        self,
        ctx: NodeContext,
        key: SigningKey,
        model: Model,
        behaviour: str = "honest",
        registration: int = 0,
    ) -> None:
        self.ctx = ctx
        self.key = key
        self.registration = registration  # nonce of the key's registration proof
        self.model = model
        self.behaviour, self.jitter = parse_behaviour(behaviour)

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
            vecs = await trio.to_thread.run_sync(self.model.embed, texts)
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

    async def _vectors(self, rnd: int) -> np.ndarray:
        """One row per (shard, slot) in commit order."""
        source_round = rnd - 1 if self.behaviour == "replay" and rnd > 0 else rnd
        vecs = await self._embed(self._texts(source_round))
        if self.behaviour == "copycat":
            # What it commits to is junk: it means to reveal other encoders' embeddings.
            vecs = np.random.default_rng().standard_normal(vecs.shape).astype(np.float32)
        if self.behaviour == "fabricated":
            rng = np.random.default_rng()
            slots = self.ctx.cfg.slots_per_shard
            for base in range(0, len(vecs), slots):
                full = vecs[base]
                for m in range(self.ctx.cfg.masks_per_shard):
                    mask = vecs[base + 2 * m + 1]
                    vecs[base + 2 * m + 2] = fabricate_inverse(full, mask, self.jitter, rng)
        return vecs

    def _sign_reveals(self, rnd: int, vecs: np.ndarray) -> list[Embedding]:
        slots = self.ctx.cfg.slots_per_shard
        return [
            make_embedding(
                self.key, self.ctx.cfg.network_id, rnd, i // slots, i % slots, os.urandom(16), v
            )
            for i, v in enumerate(vecs)
        ]

    def _stored_round(self, rnd: int) -> tuple[Commit, list[Embedding]] | None:
        """After a restart: this round's commit and reveals as first made (never re-made,
        which would be equivocation)."""
        cfg = self.ctx.cfg
        me = self.key.public_key
        commits = [decode(d, cfg, Kind.COMMIT) for d in self.ctx.store.messages(Kind.COMMIT, rnd)]
        mine = [c for c in commits if isinstance(c, Commit) and c.encoder == me]
        if not mine:
            return None
        commit = mine[0]
        held: dict[bytes, Embedding] = {}
        for data in self.ctx.store.messages(Kind.EMBEDDING, rnd):
            emb = decode(data, cfg, Kind.EMBEDDING)
            if isinstance(emb, Embedding) and emb.encoder == me:
                held.setdefault(emb.commitment(), emb)
        return commit, [held[h] for h in commit.hashes if h in held]

    async def run_round(self, rnd: int) -> None:
        cfg = self.ctx.cfg
        times = round_times(cfg, rnd)
        # The round's texts follow its Schedule votes: pull them if gossip missed some.
        await sleep_until(times.start - SCHEDULE_PULL)
        await pull_schedule(self.ctx, rnd, times.start)
        await sleep_until(times.start)
        stored = self._stored_round(rnd)
        if stored is not None:
            commit, reveals = stored
        else:
            vecs = await self._vectors(rnd)
            reveals = self._sign_reveals(rnd, vecs)
            commit = sign_commit(
                self.key,
                cfg.network_id,
                rnd,
                tuple(e.commitment() for e in reveals),
                self.registration,
            )
            if wall_clock() >= times.commit_deadline:
                self.ctx.log.warning("round %d: embedding finished after the commit deadline", rnd)
                self.ctx.ingest.count(C.ENCODER, "missed_commit_deadline")
                return
            for emb in reveals:  # held (and served to repairers) only after the deadline
                self.ctx.hold_own(Kind.EMBEDDING, emb)
            await self.ctx.publish(Kind.COMMIT, commit)
            self.ctx.log.info("round %d: committed to %d embeddings", rnd, len(commit.hashes))
        await sleep_until(times.commit_deadline + REVEAL_DELAY)
        if self.behaviour == "copycat":
            await trio.sleep(COPY_WAIT)
            reveals = self._copied(rnd)
        acked = await self._reveal([encode(e) for e in reveals], times)
        self.ctx.log.info(
            "round %d: revealed %d embeddings, held by %d peers", rnd, len(reveals), acked
        )
        if self.behaviour == "equivocator":
            twins: list[bytes] = []
            for emb in reveals:
                twin = np.array(emb.array(), dtype=np.float32) * np.float32(1.01)
                bad = make_embedding(
                    self.key, cfg.network_id, rnd, emb.shard, emb.slot, os.urandom(16), twin
                )
                # Deliberately past the slashing protection of ctx.publish.
                self.ctx.ingest.admit_own(bad, encode(bad))
                twins.append(encode(bad))
            await self._reveal(twins, times)
        if self.behaviour == "replay":
            await self._resend_earlier(rnd)

    async def _reveal(self, items: list[bytes], times: RoundTimes) -> int:
        """Push the reveals to the connected peers that keep them (node/reveals.py), and
        again every RETRY seconds while none acknowledged them all, until shortly before the
        repair deadline (validators fetch what they lack until then; meanwhile peer upkeep
        dials other keepers). Gossip would reach no one a push cannot: its fanout goes to
        the same peers. Returns how many peers hold them."""
        ctx = self.ctx
        end = times.repair_deadline - RETRY
        acked = await push_reveals(ctx.host, ctx.ingest, items, end)
        while not acked and wall_clock() + RETRY < end:
            ctx.ingest.count(C.ENCODER, "reveal_push_retried")
            await trio.sleep(RETRY)
            acked = await push_reveals(ctx.host, ctx.ingest, items, end)
        if not acked:
            ctx.ingest.count(C.ENCODER, "reveal_push_unacked")
        return acked

    def _copied(self, rnd: int) -> list[Embedding]:
        """For each slot, another encoder's reveal of this round re-signed as this encoder's."""
        me = self.key.public_key
        picked: dict[tuple[int, int], Embedding] = {}
        for data in self.ctx.store.messages(Kind.EMBEDDING, rnd):
            emb = decode(data, self.ctx.cfg, Kind.EMBEDDING)
            if isinstance(emb, Embedding) and emb.encoder != me:
                picked.setdefault((emb.shard, emb.slot), emb)
        return [
            make_embedding(
                self.key, self.ctx.cfg.network_id, rnd, e.shard, e.slot, e.salt, e.array()
            )
            for _, e in sorted(picked.items())
        ]

    async def _resend_earlier(self, rnd: int) -> None:
        """Re-send, byte for byte, this encoder's own messages of the two previous rounds."""
        cfg = self.ctx.cfg
        for old in (rnd - 1, rnd - 2):
            if old < 0:
                continue
            for kind in (Kind.COMMIT, Kind.EMBEDDING):
                for data in self.ctx.store.messages(kind, old):
                    msg = decode(data, cfg, kind)
                    if isinstance(msg, Commit | Embedding) and msg.encoder == self.key.public_key:
                        await self.ctx.host.publish(topic(cfg.network_id, kind), data)
