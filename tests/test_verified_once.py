"""Issue 11/12: per delivered embedding a validator runs exactly one dlnet Ed25519 verify,
however often it arrives (gossip duplicates, sync answers) and however often the round is read
(repair, scoring, the result). In-process: real Store, Ingest and ValidatorRole, no network."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import trio

from dlnet.node.context import WALL, NodeContext
from dlnet.node.host import Host
from dlnet.node.ingest import Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.sync import SyncClient
from dlnet.node.transport import Verdict
from dlnet.node.validator import ValidatorRole, round_view
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Embedding, Kind, encode, make_embedding, sign_commit

RND = 2


class Pool:
    """What peers would answer: every reveal of the round (held or not)."""

    def __init__(self, ingest: Ingest, reveals: list[bytes]) -> None:
        self.ingest, self.reveals = ingest, reveals
        self.asked = 0

    async def publish(self, topic: str, data: bytes) -> None:
        pass

    async def fetch_round(self, kind: Kind, rnd: int, *, deadline: float | None = None) -> int:
        return 0

    async def fetch_commitments(
        self, wanted: Iterable[bytes], *, deadline: float | None = None
    ) -> int:
        """Answers with EVERY reveal, as a careless peer would: held ones must cost no
        verify."""
        self.asked += 1
        asked = set(wanted)
        return sum(
            self.ingest.admit_requested(d, Kind.EMBEDDING, lambda v: v.commitment in asked)
            is Outcome.NEW
            for d in self.reveals
        )


def setup(tmp_path: Path) -> tuple[NetworkConfig, SigningKey, list[SigningKey]]:
    validator = SigningKey.from_seed(bytes([1]) * 32)
    cfg = default_config(
        [ValidatorEntry(validator.public_key, 100)],
        1_900_000_000,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=0),
        dim=16,
    )
    return cfg, validator, [SigningKey.from_seed(bytes([10 + i]) * 32) for i in range(4)]


def test_one_verify_per_distinct_embedding(tmp_path: Path) -> None:
    cfg, vkey, encoders = setup(tmp_path)
    times = round_times(cfg, RND)
    clock = [times.start + 1.0]
    store = Store.open(tmp_path / "v.sqlite")
    ingest = Ingest(cfg, store, lambda: clock[0])
    rng = np.random.default_rng(0)
    commits: list[bytes] = []
    reveals: list[bytes] = []
    for enc in encoders:
        embs = [
            make_embedding(enc, cfg.network_id, RND, s, k, bytes(16), rng.standard_normal(cfg.dim))
            for s in range(cfg.shards_per_round)
            for k in range(cfg.slots_per_shard)
        ]
        commits.append(
            encode(sign_commit(enc, cfg.network_id, RND, tuple(e.commitment() for e in embs)))
        )
        reveals += [encode(e) for e in embs]
    pool = Pool(ingest, reveals)
    ctx = NodeContext(
        cfg,
        tuple(f"item {i} of the corpus" for i in range(8)),
        store,
        ingest,
        cast(Host, pool),
        cast(SyncClient, pool),
        logging.getLogger("test"),
    )
    role = ValidatorRole(ctx, vkey)
    for data in commits:
        assert ingest.check(Kind.COMMIT, data) is Verdict.ACCEPT
        assert ingest.admit_checked(data) is Outcome.NEW
    # Gossip after the commit deadline: two thirds of the reveals, each delivered three times
    # (the second and third copies are duplicates before and after the first is stored).
    clock[0] = times.commit_deadline + 2.0
    gossiped = reveals[: 2 * len(reveals) // 3]
    for data in gossiped:
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.ACCEPT
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.IGNORE
        assert ingest.admit_checked(data) is Outcome.NEW
        assert ingest.check(Kind.EMBEDDING, data) is Verdict.IGNORE
    assert len(round_view(ctx, RND).missing()) == len(reveals) - len(gossiped)

    async def validator_work() -> None:
        # Repair fetches the rest (the pool answers with everything, held or not).
        await role.repair(RND, WALL.now() + 5.0)
        for _ in range(3):  # the repair loop, scoring and the result read the round again
            assert round_view(ctx, RND).missing() == []
        att = await role.score(RND)
        assert att.encoders == tuple(sorted(e.public_key for e in encoders))
        ingest.admit_own(att, encode(att))
        computed = await role.result(RND, None, WALL.now() + 5.0)
        assert computed is not None
        result, _ = computed
        assert result.encoders == att.encoders

    trio.run(validator_work)
    assert pool.asked >= 1
    assert store.counters()["accepted:embedding"] == len(reveals)
    assert ingest.verifies[Kind.EMBEDDING] == len(reveals)  # one verify per embedding
    assert ingest.verifies[Kind.COMMIT] == len(commits)
    assert len(store.held(Embedding, RND)) == len(reveals)
    store.close()


def test_a_restarted_node_decodes_a_held_round_once(tmp_path: Path) -> None:
    """Rows held from before the process are decoded (and verified) once, at the first read;
    every later read is from memory."""
    cfg, _, encoders = setup(tmp_path)
    times = round_times(cfg, RND)
    enc = encoders[0]
    emb = make_embedding(enc, cfg.network_id, RND, 0, 0, bytes(16), np.ones(cfg.dim))
    path = tmp_path / "v.sqlite"
    first = Store.open(path)
    Ingest(cfg, first, lambda: times.commit_deadline + 2.0).admit(encode(emb), Kind.EMBEDDING)
    first.close()
    store = Store.open(path)
    ingest = Ingest(cfg, store, lambda: times.commit_deadline + 2.0)
    for _ in range(3):
        assert [v.msg for v in store.held(Embedding, RND)] == [emb]
    assert ingest.verifies[Kind.EMBEDDING] == 1
    store.close()


def test_verified_values_leave_memory_with_their_round(tmp_path: Path) -> None:
    """The in-memory cache is bounded by the accepted window: admitting a message of a later
    round drops the verified values of rounds that left the window (SQLite keeps them, and a
    late read decodes them once again)."""
    cfg, _, encoders = setup(tmp_path)
    store = Store.open(tmp_path / "v.sqlite")
    clock = [round_times(cfg, RND).commit_deadline + 2.0]
    ingest = Ingest(cfg, store, lambda: clock[0])
    enc = encoders[0]

    def reveal(rnd: int) -> bytes:
        return encode(make_embedding(enc, cfg.network_id, rnd, 0, 0, bytes(16), np.ones(cfg.dim)))

    assert ingest.admit(reveal(RND), Kind.EMBEDDING) is Outcome.NEW
    assert (Kind.EMBEDDING, RND) in store._cache
    later = RND + cfg.timing.round_window + 1
    clock[0] = round_times(cfg, later).commit_deadline + 2.0
    assert ingest.admit(reveal(later), Kind.EMBEDDING) is Outcome.NEW
    assert RND not in {r for _, r in store._cache}
    assert len(store.held(Embedding, RND)) == 1  # read again from SQLite
    assert ingest.verifies[Kind.EMBEDDING] == 3
    store.close()
