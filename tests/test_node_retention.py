"""A node's store keeps the last ``--keep-rounds`` rounds of messages (node/retention.py,
`Store.prune`): what proves and answers an old round stays, the bulk goes, once a round. In
process: a store, its admission and trio's virtual time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import trio
from trio.testing import MockClock

from dlnet.node.context import NodeContext, TrioClock
from dlnet.node.ingest import Ingest
from dlnet.node.retention import check_keep_rounds, min_keep_rounds, prune_rounds
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.transport import Transport
from dlnet.protocol.canonical import sha256
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import (
    Commit,
    Kind,
    Submission,
    encode,
    message_id,
    sign_commit,
    sign_submission,
)

VALIDATOR = SigningKey.from_seed(sha256(b"retention validator"))
ENCODER = SigningKey.from_seed(sha256(b"retention encoder"))
ROUNDS = 10


def config() -> NetworkConfig:
    return default_config(
        [ValidatorEntry(VALIDATOR.public_key, 10)],
        1_700_000_000,
        dataset_sha256=sha256(b"data"),
        registration=RegistrationParams(difficulty=0),
    )


def filled(cfg: NetworkConfig, path: Path) -> tuple[Store, Ingest, list[bytes]]:
    """A store holding, for rounds 0..ROUNDS-1, a commit (signed here), a submission, evidence,
    round state, a certificate and an outcome; returns it, its admission and the commits'
    ids."""
    store = Store.open(path)
    ingest = Ingest(cfg, store, lambda: float(cfg.genesis_time))
    commit_ids = []
    hashes = (b"h" * 32,) * (cfg.shards_per_round * cfg.slots_per_shard)
    for r in range(ROUNDS):
        commit = sign_commit(ENCODER, cfg.network_id, r, hashes)
        data = encode(commit)
        mid = message_id(data)
        assert (
            store.record_signing(ENCODER.public_key, int(Kind.COMMIT), r, None, None, mid) is None
        )
        ingest.admit_own(commit, data)
        commit_ids.append(mid)
        sub = sign_submission(ENCODER, cfg.network_id, r, (f"text of round {r}",))
        ingest.admit_own(sub, encode(sub))
        store.put_equivocation(r, ENCODER.public_key, None, None, b"first", b"second")
        store.put_round_state(r, "result", b"result bytes")
        store.put_finalized_at(r, float(cfg.genesis_time + r), None)
        store.put_certificate(r, b"certificate %d" % r)
        store.put_round_outcome(r, True, bytes(32))
    return store, ingest, commit_ids


def test_prune_drops_the_bulk_of_old_rounds_and_keeps_what_proves_them(tmp_path: Path) -> None:
    cfg = config()
    store, _, ids = filled(cfg, tmp_path / "store.sqlite")
    assert all(len(store.held(Commit, r)) == 1 for r in range(ROUNDS))  # in memory too
    assert store.prune(4) == 4  # one commit in each of rounds 0..3
    for r in range(ROUNDS):
        old = r < 4
        assert len(store.held(Commit, r)) == (0 if old else 1), r
        assert store.signed_here(ids[r]) is not old, r
        assert (store.equivocators(r) == set()) is old, r
        assert (store.get_round_state(r, "result") is None) is old, r
        # what proves and answers a round stays
        assert len(store.held(Submission, r)) == 1, r
        assert store.finalized_at(r) is not None, r
    assert [r for r, _ in store.certificates(0, ROUNDS)] == list(range(ROUNDS))
    assert [r for r, fin, _ in store.round_outcomes()] == list(range(ROUNDS))
    assert store.prune(4) == 0  # nothing left to drop
    store.close()
    # Reopened, the store reads the same: rows of pruned rounds are gone from disk.
    again = Store.open(tmp_path / "store.sqlite")
    Ingest(cfg, again, lambda: float(cfg.genesis_time))
    assert [len(again.held(Commit, r)) for r in range(ROUNDS)] == [0] * 4 + [1] * 6
    assert all(len(again.held(Submission, r)) == 1 for r in range(ROUNDS))
    again.close()


def test_a_node_prunes_at_every_round_start(tmp_path: Path) -> None:
    """With keep = 3, at round 8 a node holds rounds 5..9 (the next one came early); one round
    later rounds 6..9; a keep of 0 never prunes."""
    cfg = config()
    store, ingest, _ = filled(cfg, tmp_path / "store.sqlite")
    at_round_8 = round_times(cfg, 8).start + 1.0

    def held_rounds() -> list[int]:
        return [r for r in range(ROUNDS) if store.held(Commit, r)]

    async def main() -> None:
        clock = TrioClock(at_round_8 - trio.current_time())
        ctx = NodeContext(
            cfg,
            (),
            store,
            ingest,
            cast(Transport, None),  # pruning touches the store only
            cast(SyncClient, None),
            logging.getLogger("test"),
            clock=clock,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prune_rounds, ctx, 0)
            await trio.sleep(0)
            assert held_rounds() == list(range(ROUNDS))
            nursery.start_soon(prune_rounds, ctx, 3)
            await trio.sleep(1.0)
            assert held_rounds() == [5, 6, 7, 8, 9]
            await clock.sleep_until(round_times(cfg, 9).start + 1.0)
            assert held_rounds() == [6, 7, 8, 9]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))
    store.close()


def test_the_fewest_rounds_a_node_may_keep() -> None:
    cfg = config()
    least = min_keep_rounds(cfg)
    assert least == 4 * cfg.scoring.probe_window + cfg.timing.round_window + 2
    check_keep_rounds(cfg, least)
    check_keep_rounds(cfg, 0)  # keep all
    try:
        check_keep_rounds(cfg, least - 1)
    except ValueError as exc:
        assert f"needs the last {least} rounds" in str(exc)
    else:
        raise AssertionError("a keep below the look-back passed")


def test_pruned_pages_are_free_for_reuse(tmp_path: Path) -> None:
    """What `Store.size` (the `dlnet_store_bytes` gauge) reports: pruning moves bytes from in
    use to free, and new rounds fill the free pages before the file grows."""
    cfg = config()
    store, ingest, _ = filled(cfg, tmp_path / "store.sqlite")
    used, free = store.size()
    store.prune(ROUNDS)
    used_after, free_after = store.size()
    assert used_after < used and free_after > free
    assert used_after + free_after == used + free  # the file did not shrink
    hashes = (b"h" * 32,) * (cfg.shards_per_round * cfg.slots_per_shard)
    for r in range(ROUNDS, 2 * ROUNDS):  # as many commits as were pruned
        commit = sign_commit(ENCODER, cfg.network_id, r, hashes)
        ingest.admit_own(commit, encode(commit))
    used_now, free_now = store.size()
    assert used_now > used_after and used_now + free_now == used + free  # no growth
    store.close()
