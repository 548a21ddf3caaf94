"""One round as a validator counts it: which commits and reveals count, what is still missing,
the scoring inputs, the full embeddings the result weighs, and the messages digest.

Pure: the inputs are messages that already passed admission (decoded, signature checked, in
store order), carried as `Verified` values so that nothing here decodes or verifies again.
docs/PROTOCOL.md §5 ("Reveals that count", "Scoring inputs") specifies every rule here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.canonical import sha256
from dlnet.protocol.wire import Commit, Embedding, Message

MESSAGES_TAG = b"dlnet/v1/messages"
"""Domain tag of `messages_digest`."""

M = TypeVar("M", bound=Message, covariant=True)


@dataclass(frozen=True)
class Verified(Generic[M]):
    """A message that passed admission: decoded strictly, signature checked, stored. Carried
    with its bytes, message id (``SHA-256(data)``) and, for an Embedding, its commitment, all
    computed once at admission (Lighthouse's "verified" gossip types are the model)."""

    msg: M
    data: bytes
    id: bytes
    commitment: bytes | None = None


@dataclass(frozen=True)
class RoundView:
    """What counts of a round's held commits and reveals (`round_view`)."""

    commits: Mapping[bytes, Commit]
    """encoder -> its commit (the first held)."""
    reveals: Mapping[bytes, Embedding]
    """commitment -> the reveal matching it."""
    equivocators: frozenset[bytes]
    used_ids: tuple[bytes, ...]
    """Message ids of the commits and reveals that count, ascending."""

    def missing(self) -> list[bytes]:
        """Commitments listed by a non-equivocating encoder's commit whose reveal is not held,
        by encoder then list order: what repair fetches."""
        return [
            h
            for enc, c in sorted(self.commits.items())
            if enc not in self.equivocators
            for h in c.hashes
            if h not in self.reveals
        ]

    def reveal_of(self, encoder: bytes, h: bytes) -> Embedding | None:
        """The held reveal with commitment ``h`` if ``encoder`` signed it (a commit may list
        another encoder's commitments: they are never its reveals)."""
        r = self.reveals.get(h)
        return r if r is not None and r.encoder == encoder else None

    def held(self, encoder: bytes) -> int:
        """How many of ``encoder``'s listed reveals are held."""
        c = self.commits.get(encoder)
        return 0 if c is None else sum(self.reveal_of(encoder, h) is not None for h in c.hashes)


def round_view(
    commits: Iterable[Verified[Commit]],
    reveals: Iterable[Verified[Embedding]],
    equivocators: Iterable[bytes],
    slots: int,
) -> RoundView:
    """The round view from the round's verified commits and reveals, each in the order held
    (``slots`` = the config's ``slots_per_shard``).

    - An encoder's first held commit is its commit (a second one is equivocation evidence and
      is never stored beside it).
    - A reveal counts iff its commitment is what the commit of the reveal's own encoder lists
      at the reveal's (shard, slot) (so a copier's reveal of someone else's embedding, under
      its own key, matches nothing, and a commit listing another encoder's commitments takes
      nothing from that encoder), and it is the first held with that commitment.
    - ``equivocators`` (signers with evidence of equivocation this round) stay in ``commits``
      (the result names them when attested) but `missing` never asks for their reveals and
      `scoring_inputs` gives them nothing: they score 0.
    """
    chosen: dict[bytes, Verified[Commit]] = {}
    for v in commits:
        chosen.setdefault(v.msg.encoder, v)
    matched: dict[bytes, Verified[Embedding]] = {}
    for r in reveals:
        h = r.commitment if r.commitment is not None else r.msg.commitment()
        held = chosen.get(r.msg.encoder)
        if h not in matched and listed_at(None if held is None else held.msg, r.msg, slots) == h:
            matched[h] = r
    used = [v.id for v in chosen.values()] + [r.id for r in matched.values()]
    return RoundView(
        {enc: v.msg for enc, v in chosen.items()},
        {h: r.msg for h, r in matched.items()},
        frozenset(equivocators),
        tuple(sorted(used)),
    )


def listed_at(commit: Commit | None, reveal: Embedding, slots: int) -> bytes | None:
    """The commitment ``commit`` lists at ``reveal``'s (shard, slot) (index
    ``shard * slots + slot``: the probe's halves follow the last shard, `probe_vectors`), if
    any. Decoding bounds the slot: below ``slots`` on a shard, below the probe's halves on the
    probe shard."""
    if commit is None or reveal.slot < 0:
        return None
    i = reveal.shard * slots + reveal.slot
    return commit.hashes[i] if 0 <= i < len(commit.hashes) else None


def messages_digest(view: RoundView) -> bytes:
    """``SHA-256(b"dlnet/v1/messages" || sorted message ids of the commits and reveals that
    count)``: what an Attestation's ``messages_digest`` field carries."""
    return sha256(MESSAGES_TAG, *view.used_ids)


def scoring_inputs(
    view: RoundView, encoders: Sequence[bytes], shards: int, slots: int
) -> list[dict[bytes, NDArray[np.float32]]]:
    """Per shard, for each of ``encoders`` (the scored ones) that is not an equivocator and
    whose every slot of the shard is held: its ``slots x dim`` embeddings in slot order (full,
    then mask and inverse per mask). An encoder missing from a shard's map scores 0 there."""
    out: list[dict[bytes, NDArray[np.float32]]] = []
    for shard in range(shards):
        held: dict[bytes, NDArray[np.float32]] = {}
        for enc in encoders:
            c = view.commits.get(enc)
            if c is None or enc in view.equivocators:
                continue
            got = [view.reveal_of(enc, h) for h in c.hashes[shard * slots : (shard + 1) * slots]]
            if all(r is not None for r in got):
                held[enc] = np.stack([r.array() for r in got if r is not None])
        out.append(held)
    return out


def lists_probe(view: RoundView, encoder: bytes, shards: int, slots: int, halves: int) -> bool:
    """Whether ``encoder``'s commit lists the round's probe halves (after its ``shards *
    slots`` shard commitments): an encoder that committed without them skipped the probe."""
    c = view.commits.get(encoder)
    return c is not None and len(c.hashes) == shards * slots + halves


def probe_vectors(
    view: RoundView, encoder: bytes, shards: int, slots: int, halves: int
) -> list[NDArray[np.float32] | None]:
    """``encoder``'s reveals of the round's probe halves, by position (None where its commit
    lists none, it is an equivocator, or the reveal is not held): a commit lists them after
    its ``shards * slots`` shard commitments, in position order."""
    c = view.commits.get(encoder)
    if c is None or encoder in view.equivocators or len(c.hashes) != shards * slots + halves:
        return [None] * halves
    got = [view.reveal_of(encoder, h) for h in c.hashes[shards * slots :]]
    return [None if r is None else r.array() for r in got]


def full_embeddings(
    view: RoundView, shards: int, slots: int
) -> dict[tuple[int, bytes], NDArray[np.float32]]:
    """``(shard, encoder) -> full embedding`` (slot 0) for every committed encoder whose full
    reveal of the shard is held: what `consensus.compute_result` weighs (it asks for the
    positively weighted ones it lacks, `MissingEmbeddings`)."""
    out: dict[tuple[int, bytes], NDArray[np.float32]] = {}
    for enc, c in view.commits.items():
        for shard in range(shards):
            r = view.reveal_of(enc, c.hashes[shard * slots])
            if r is not None:
                out[(shard, enc)] = r.array()
    return out


def full_commitments(
    view: RoundView, cells: Iterable[tuple[int, bytes]], slots: int
) -> list[bytes]:
    """The commitments of the full embeddings of ``cells`` ((shard, encoder) pairs) whose
    encoder's commit is held: what to fetch for a `MissingEmbeddings`."""
    return [view.commits[enc].hashes[shard * slots] for shard, enc in cells if enc in view.commits]
