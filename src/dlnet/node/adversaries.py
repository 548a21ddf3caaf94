"""TEST-ONLY encoder adversaries (`dlnet run --behaviour NAME`, testnet kinds): each one a
`Behaviour` whose hooks `EncoderRole` calls at four points, so the honest code path holds no
branch for them. Each is a cheat the protocol must defeat (docs/PROTOCOL.md, "Cheats"):

* ``fabricated`` — honest full and mask embeddings, inverse forged as full - mask (DL = 0);
  ``fabricated@JITTER`` adds a random vector of norm JITTER x ||full|| (DL about JITTER), so
  the inverse is no longer too exact;
* ``leaky`` — honest embeddings with the full embedding mixed into every mask and inverse
  (``leaky@LEAK``, default 0.5; `kinds.leak_full`): an honest residual with a DL below the pool's;
* ``copycat`` — commits to junk, then reveals other encoders' embeddings re-signed as its own;
* ``replay`` — reveals, re-signed for this round, embeddings made for the previous round's
  shards, and re-sends its earlier rounds' messages verbatim;
* ``equivocator`` — reveals two different signed embeddings for every slot.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

import numpy as np
import trio

from dlnet.node.commits import gossip_payload
from dlnet.node.models.kinds import fabricate_inverse, jitter_option, leak_full, leak_option
from dlnet.protocol.wire import Commit, Embedding, Kind, decode, encode, make_embedding, topic

if TYPE_CHECKING:  # the role imports this module
    from dlnet.node.encoder import EncoderRole

BEHAVIOURS: Final = ("honest", "fabricated", "leaky", "copycat", "replay", "equivocator")
LEVELS: Final = {"fabricated": (jitter_option, 0.0), "leaky": (leak_option, 0.5)}
"""Behaviours that take ``@LEVEL``: the level's checker and its default."""
# How long a copycat listens to other encoders' reveals before copying them.
COPY_WAIT: Final = 3.0

Reveal = Callable[[list[bytes]], Awaitable[int]]
"""Push reveals to the peers that keep them (`EncoderRole._reveal` for this round)."""


def parse_behaviour(text: str) -> tuple[str, float]:
    """``NAME`` (one of BEHAVIOURS), ``fabricated@JITTER`` or ``leaky@LEAK``: the behaviour and
    its level (LEVELS' default unless given; 0 for the others). ValueError, one line, on
    anything else."""
    name, at, level = text.partition("@")
    if name not in BEHAVIOURS:
        raise ValueError(f"unknown encoder behaviour {name!r}; behaviours: {', '.join(BEHAVIOURS)}")
    if name not in LEVELS:
        if at:
            raise ValueError(f"behaviour {name} takes no @level")
        return name, 0.0
    check, default = LEVELS[name]
    return name, check(level) if at else default


@dataclass(frozen=True)
class Behaviour:
    """The honest encoder: every hook leaves the round as the role made it."""

    signs_twice: ClassVar[bool] = False
    """Signs a second message for a slot by design, past the slashing protection: its own
    key's other message, come back as evidence, is no doppelganger (node/runtime.py)."""

    def source_round(self, rnd: int) -> int:
        """The round whose texts are embedded for round ``rnd``."""
        return rnd

    def committed(self, role: EncoderRole, vecs: np.ndarray) -> np.ndarray:
        """The vectors committed to, one row per (shard, slot), from the model's."""
        return vecs

    async def revealed(self, role: EncoderRole, rnd: int, own: list[Embedding]) -> list[Embedding]:
        """What is revealed after the commit deadline, given what was committed to."""
        return own

    async def after_reveal(
        self, role: EncoderRole, rnd: int, reveals: list[Embedding], reveal: Reveal
    ) -> None:
        """Anything sent after the reveal."""


@dataclass(frozen=True)
class Fabricated(Behaviour):
    jitter: float = 0.0

    def committed(self, role: EncoderRole, vecs: np.ndarray) -> np.ndarray:
        cfg = role.ctx.cfg
        rng = np.random.default_rng()
        for base in range(0, len(vecs), cfg.slots_per_shard):
            full = vecs[base]
            for m in range(cfg.masks_per_shard):
                mask = vecs[base + 2 * m + 1]
                vecs[base + 2 * m + 2] = fabricate_inverse(full, mask, self.jitter, rng)
        return vecs


@dataclass(frozen=True)
class Leaky(Behaviour):
    leak: float  # its default is LEVELS'

    def committed(self, role: EncoderRole, vecs: np.ndarray) -> np.ndarray:
        per = role.ctx.cfg.slots_per_shard
        for base in range(0, len(vecs), per):
            vecs[base : base + per] = leak_full(vecs[base : base + per], self.leak)
        return vecs


@dataclass(frozen=True)
class Copycat(Behaviour):
    signs_twice: ClassVar[bool] = True

    def committed(self, role: EncoderRole, vecs: np.ndarray) -> np.ndarray:
        # Junk: it means to reveal other encoders' embeddings.
        return np.random.default_rng().standard_normal(vecs.shape).astype(np.float32)

    async def revealed(self, role: EncoderRole, rnd: int, own: list[Embedding]) -> list[Embedding]:
        """For each slot, another encoder's reveal of this round re-signed as its own."""
        await trio.sleep(COPY_WAIT)
        ctx = role.ctx
        picked: dict[tuple[int, int], Embedding] = {}
        for data in ctx.store.messages(Kind.EMBEDDING, rnd):
            emb = decode(data, ctx.cfg, Kind.EMBEDDING)
            if isinstance(emb, Embedding) and emb.encoder != role.key.public_key:
                picked.setdefault((emb.shard, emb.slot), emb)
        return [
            make_embedding(role.key, ctx.cfg.network_id, rnd, e.shard, e.slot, e.salt, e.array())
            for _, e in sorted(picked.items())
        ]


@dataclass(frozen=True)
class Replay(Behaviour):
    def source_round(self, rnd: int) -> int:
        return rnd - 1 if rnd > 0 else rnd

    async def after_reveal(
        self, role: EncoderRole, rnd: int, reveals: list[Embedding], reveal: Reveal
    ) -> None:
        """Re-send, byte for byte, its own messages of the two previous rounds."""
        ctx = role.ctx
        for old in (rnd - 1, rnd - 2):
            if old < 0:
                continue
            for kind in (Kind.COMMIT, Kind.EMBEDDING):
                for data in ctx.store.messages(kind, old):
                    msg = decode(data, ctx.cfg, kind)
                    if isinstance(msg, Commit | Embedding) and msg.encoder == role.key.public_key:
                        await ctx.host.publish(
                            topic(ctx.cfg.network_id, kind), gossip_payload(kind, data)
                        )


@dataclass(frozen=True)
class Equivocator(Behaviour):
    signs_twice: ClassVar[bool] = True

    async def after_reveal(
        self, role: EncoderRole, rnd: int, reveals: list[Embedding], reveal: Reveal
    ) -> None:
        """A second, different signed embedding for every slot."""
        ctx = role.ctx
        twins: list[bytes] = []
        for emb in reveals:
            twin = np.array(emb.array(), dtype=np.float32) * np.float32(1.01)
            bad = make_embedding(
                role.key, ctx.cfg.network_id, rnd, emb.shard, emb.slot, os.urandom(16), twin
            )
            ctx.ingest.admit_own(bad, encode(bad))  # deliberately past the slashing protection
            twins.append(encode(bad))
        await reveal(twins)


def behaviour(text: str) -> Behaviour:
    """The `Behaviour` that ``--behaviour text`` names (`parse_behaviour`)."""
    name, level = parse_behaviour(text)
    levelled: dict[str, Callable[[float], Behaviour]] = {"fabricated": Fabricated, "leaky": Leaky}
    if name in levelled:
        return levelled[name](level)
    kinds: dict[str, type[Behaviour]] = {
        "honest": Behaviour,
        "copycat": Copycat,
        "replay": Replay,
        "equivocator": Equivocator,
    }
    return kinds[name]()
