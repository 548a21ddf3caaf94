"""protocol/round.py: which commits and reveals count, what is missing, the scoring inputs,
the full embeddings and the messages digest (PROTOCOL.md §5 "Reveals that count")."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dlnet.protocol.canonical import sha256
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.round import (
    MESSAGES_TAG,
    Verified,
    full_commitments,
    full_embeddings,
    messages_digest,
    round_view,
    scoring_inputs,
)
from dlnet.protocol.wire import (
    Commit,
    Embedding,
    encode,
    make_embedding,
    message_id,
    sign_commit,
)

NET = sha256(b"net")
RND = 3
SHARDS, SLOTS, DIM = 2, 3, 4
KEYS = [SigningKey.from_seed(sha256(b"enc%d" % i)) for i in range(4)]


def verified(msg: Commit | Embedding) -> Verified:  # type: ignore[type-arg]
    data = encode(msg)
    h = msg.commitment() if isinstance(msg, Embedding) else None
    return Verified(msg, data, message_id(data), h)


def reveals(key: SigningKey, tag: bytes = b"") -> list[Embedding]:
    """Every (shard, slot) reveal of ``key``, vectors following its key (and ``tag``)."""
    out = []
    for shard in range(SHARDS):
        for slot in range(SLOTS):
            seed = int.from_bytes(sha256(key.public_key, tag, bytes([shard, slot]))[:4], "big")
            vector = np.random.default_rng(seed).standard_normal(DIM)
            salt = sha256(b"salt", key.public_key, tag, bytes([shard, slot]))[:16]
            out.append(make_embedding(key, NET, RND, shard, slot, salt, vector))
    return out


def commit_to(key: SigningKey, embs: list[Embedding]) -> Commit:
    return sign_commit(key, NET, RND, tuple(e.commitment() for e in embs))


def honest(key: SigningKey) -> tuple[Verified, list[Verified]]:  # type: ignore[type-arg]
    embs = reveals(key)
    return verified(commit_to(key, embs)), [verified(e) for e in embs]


def test_every_committed_reveal_counts_and_nothing_is_missing() -> None:
    c0, r0 = honest(KEYS[0])
    c1, r1 = honest(KEYS[1])
    view = round_view([c0, c1], r0 + r1, [], SLOTS)
    assert set(view.commits) == {KEYS[0].public_key, KEYS[1].public_key}
    assert len(view.reveals) == 2 * SHARDS * SLOTS
    assert view.missing() == []
    assert view.used_ids == tuple(sorted(v.id for v in [c0, c1, *r0, *r1]))
    assert view.held(KEYS[0].public_key) == SHARDS * SLOTS


def test_missing_lists_what_repair_fetches() -> None:
    c0, r0 = honest(KEYS[0])
    view = round_view([c0], r0[1:], [], SLOTS)
    assert view.missing() == [c0.msg.hashes[0]]
    assert view.held(KEYS[0].public_key) == SHARDS * SLOTS - 1


def test_a_copiers_reveal_is_not_matched() -> None:
    """A copier re-signs another encoder's vectors under its own key and commits to the
    victim's commitments (commits are public before the deadline): the commitment covers the
    encoder key, so the copies match nothing, and the victim's reveals still count (on
    e847b5d a later commit listing the same hashes took them over)."""
    c0, r0 = honest(KEYS[0])
    copies = [
        make_embedding(KEYS[1], NET, RND, e.shard, e.slot, e.salt, e.array())
        for e in reveals(KEYS[0])
    ]
    # The copier's commit lists the victim's commitments, signed with its own key.
    c1 = verified(sign_commit(KEYS[1], NET, RND, c0.msg.hashes))
    view = round_view([c0, c1], r0 + [verified(e) for e in copies], [], SLOTS)
    assert all(r.encoder == KEYS[0].public_key for r in view.reveals.values())
    assert view.held(KEYS[1].public_key) == 0
    assert view.held(KEYS[0].public_key) == SHARDS * SLOTS
    # Nor is the copier scored with, or weighted by, the victim's embeddings.
    both = [KEYS[0].public_key, KEYS[1].public_key]
    assert all(
        set(shard) == {KEYS[0].public_key} for shard in scoring_inputs(view, both, SHARDS, SLOTS)
    )
    assert {enc for _, enc in full_embeddings(view, SHARDS, SLOTS)} == {KEYS[0].public_key}


def test_a_reveal_without_a_commit_counts_for_nothing() -> None:
    _, r0 = honest(KEYS[0])
    view = round_view([], r0, [], SLOTS)
    assert view.reveals == {} and view.used_ids == () and view.missing() == []


def test_a_reveal_counts_only_at_the_slot_its_commit_lists_it() -> None:
    embs = reveals(KEYS[0])
    swapped = [embs[1].commitment(), embs[0].commitment(), *(e.commitment() for e in embs[2:])]
    c = verified(sign_commit(KEYS[0], NET, RND, tuple(swapped)))
    view = round_view([c], [verified(e) for e in embs], [], SLOTS)
    assert set(view.missing()) == {embs[0].commitment(), embs[1].commitment()}


def test_first_commit_wins() -> None:
    first = reveals(KEYS[0])
    second = reveals(KEYS[0], b"other")
    c_first, c_second = verified(commit_to(KEYS[0], first)), verified(commit_to(KEYS[0], second))
    view = round_view([c_first, c_second], [verified(e) for e in first + second], [], SLOTS)
    assert view.commits[KEYS[0].public_key] == c_first.msg
    assert set(view.reveals) == set(c_first.msg.hashes)
    assert c_second.id not in view.used_ids


def test_equivocator_is_excluded_from_missing_and_scoring_but_kept_committed() -> None:
    c0, r0 = honest(KEYS[0])
    c1, r1 = honest(KEYS[1])
    view = round_view([c0, c1], r0 + r1[:2], [KEYS[1].public_key], SLOTS)
    assert KEYS[1].public_key in view.commits  # the result may still name it (scored 0)
    assert view.missing() == []  # nothing is fetched for an equivocator
    inputs = scoring_inputs(view, [KEYS[0].public_key, KEYS[1].public_key], SHARDS, SLOTS)
    assert all(set(shard) == {KEYS[0].public_key} for shard in inputs)


def test_scoring_inputs_need_every_slot_of_a_shard() -> None:
    c0, r0 = honest(KEYS[0])
    view = round_view([c0], r0[:SLOTS] + r0[SLOTS + 1 :], [], SLOTS)  # shard 1 lacks its full
    inputs = scoring_inputs(view, [KEYS[0].public_key], SHARDS, SLOTS)
    assert list(inputs[1]) == []
    got = inputs[0][KEYS[0].public_key]
    assert got.shape == (SLOTS, DIM)
    assert np.array_equal(got, np.stack([r.msg.array() for r in r0[:SLOTS]]))
    fulls = full_embeddings(view, SHARDS, SLOTS)
    assert set(fulls) == {(0, KEYS[0].public_key)}
    assert full_commitments(view, [(1, KEYS[0].public_key), (0, KEYS[3].public_key)], SLOTS) == [
        c0.msg.hashes[SLOTS]
    ]


def test_messages_digest_is_tagged_and_order_free() -> None:
    c0, r0 = honest(KEYS[0])
    view = round_view([c0], r0, [], SLOTS)
    assert messages_digest(view) == sha256(MESSAGES_TAG, *sorted(v.id for v in [c0, *r0]))
    assert messages_digest(round_view([c0], list(reversed(r0)), [], SLOTS)) == messages_digest(view)
    assert messages_digest(round_view([c0], r0[1:], [], SLOTS)) != messages_digest(view)


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations(range(2 * SHARDS * SLOTS)),
    keep=st.lists(st.booleans(), min_size=2 * SHARDS * SLOTS, max_size=2 * SHARDS * SLOTS),
    equivocating=st.sets(st.sampled_from([0, 1])),
)
def test_view_depends_on_what_is_held_not_on_arrival_order(
    order: list[int], keep: list[bool], equivocating: set[int]
) -> None:
    """Any arrival order of the same reveals gives the same view; `missing` is exactly the
    non-equivocators' listed commitments not held."""
    c0, r0 = honest(KEYS[0])
    c1, r1 = honest(KEYS[1])
    everything = r0 + r1
    held = [everything[i] for i in order if keep[i]]
    eq = [KEYS[i].public_key for i in equivocating]
    view = round_view([c0, c1], held, eq, SLOTS)
    again = round_view([c0, c1], sorted(held, key=lambda v: v.id), eq, SLOTS)
    assert view == again
    held_hashes = {v.commitment for v in held}
    assert view.missing() == [
        h
        for c in sorted([c0.msg, c1.msg], key=lambda c: c.encoder)
        if c.encoder not in eq
        for h in c.hashes
        if h not in held_hashes
    ]
