"""The validator derives earned influence from the certificates it stores (issue 10)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
from threadpoolctl import threadpool_info

from dlnet.node import validator
from dlnet.node.context import NodeContext
from dlnet.node.ingest import Ingest
from dlnet.node.store import Store
from dlnet.node.validator import ValidatorRole
from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.consensus import compute_result
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.influence import apply, derive, genesis_state
from dlnet.protocol.result import RoundResult, result_digest
from dlnet.protocol.wire import Certificate, encode, sign_attestation, sign_vote


def certificate(cfg: Any, result: RoundResult, signers: list[SigningKey]) -> bytes:
    digest = result_digest(result)
    votes = sorted(
        (k.public_key, sign_vote(k, cfg.network_id, result.round, digest).signature)
        for k in signers
    )
    return encode(Certificate(cfg.network_id, result.round, result, tuple(votes)))


def test_influence_comes_from_verified_certificates_up_to_two_rounds_back(tmp_path: Path) -> None:
    validators = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    encoders = sorted(SigningKey.from_seed(bytes([50 + i]) * 32).public_key for i in range(3))
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        1_800_000_000,
        dataset_sha256=bytes(32),
        seed_encoders=(encoders[2],),
    )
    grid = np.array([[60000, 30000, 5]] * cfg.shards_per_round, dtype="<u2")
    flags = np.zeros((cfg.shards_per_round, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    fulls = {
        (s, e): rng.standard_normal(cfg.dim).astype(np.float32)
        for s in range(cfg.shards_per_round)
        for e in encoders
    }

    def result(rnd: int) -> RoundResult:
        atts = [
            sign_attestation(
                k, cfg.network_id, rnd, tuple(encoders), grid.tobytes(), flags.tobytes(), bytes(32)
            )
            for k in validators
        ]
        return compute_result(cfg, rnd, atts, fulls, texts=(bytes(32),) * cfg.shards_per_round)

    store = Store.open(tmp_path / "node.sqlite")
    r3, r4 = result(3), result(4)
    store.put_certificate(3, certificate(cfg, r3, validators))
    store.put_certificate(4, certificate(cfg, r4, validators))
    forged = dataclasses.replace(result(1), encoder_scores=(65535, 65535, 0))
    store.put_certificate(1, certificate(cfg, forged, validators[:2]))  # 2/3: not final
    role = ValidatorRole(SimpleNamespace(cfg=cfg, store=store), validators[0])  # type: ignore[arg-type]
    seeds = genesis_state([encoders[2]])
    assert role.influence(4) == seeds  # round 2 and before: only the forged certificate
    assert role.influence(5) == apply(seeds, r3)
    assert role.influence(6) == derive([encoders[2]], [r4, r3], 4)
    assert role.influence(6).of(encoders[0]) > role.influence(6).of(encoders[1]) > 0
    # A node catching up derives the same from the same certificates.
    again = ValidatorRole(SimpleNamespace(cfg=cfg, store=store), validators[1])  # type: ignore[arg-type]
    assert again.influence(6) == role.influence(6)
    store.close()


def test_the_validator_scores_only_registered_encoders_and_newcomers_with_room(
    tmp_path: Path,
) -> None:
    from dlnet.node.ingest import Ingest
    from dlnet.node.validator import RoundView
    from dlnet.protocol.params import RegistrationParams
    from dlnet.protocol.wire import sign_commit

    validators = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    keys = [SigningKey.from_seed(bytes([60 + i]) * 32) for i in range(4)]
    seeds = tuple(sorted(k.public_key for k in keys[:2]))
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        1_800_000_000,
        dataset_sha256=bytes(32),
        seed_encoders=seeds,
        registration=RegistrationParams(max_encoders=3, difficulty=1, immunity_rounds=8),
    )
    store = Store.open(tmp_path / "node.sqlite")
    ingest = Ingest(cfg, store, lambda: 0.0)
    n = cfg.shards_per_round * cfg.slots_per_shard
    commits = {
        k.public_key: sign_commit(k, cfg.network_id, 3, (bytes(32),) * n, registration=i)
        for i, k in enumerate(keys)
    }
    role = ValidatorRole(SimpleNamespace(cfg=cfg, store=store, ingest=ingest), validators[0])  # type: ignore[arg-type]
    influence, registry = role.records(3)
    assert registry.keys() == set(seeds) and influence.of(seeds[0]) == 65535
    view = RoundView(commits, {}, frozenset(), ())
    chosen = role.scored_encoders(3, view, registry)
    # Two seeds and one free place: of the two newcomers, the one whose proof did more work
    # (the smaller scrypt output) is scored; the other is counted, not listed.
    newcomers = sorted(
        (ingest.proofs.work(k.public_key, i), k.public_key) for i, k in enumerate(keys[2:], 2)
    )
    assert chosen == tuple(sorted([*seeds, newcomers[0][1]]))
    store.close()


def test_scoring_reads_the_store_only_from_the_trio_thread(tmp_path: Path) -> None:
    """Issue 12: the store's connection is used only from the trio thread; only the pure
    scoring crosses to a worker thread (before, the whole of ``score`` ran there, reading
    and writing SQLite)."""
    validators = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    cfg = default_config(
        [ValidatorEntry(k.public_key, 100) for k in validators],
        1_800_000_000,
        dataset_sha256=bytes(32),
    )
    store = Store.open(tmp_path / "node.sqlite")
    threads: set[int] = set()

    class Watched:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(store, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                threads.add(threading.get_ident())
                return attr(*args, **kwargs)

            return call

    items = tuple(f"text number {i}" for i in range(64))
    ingest = Ingest(cfg, store, lambda: 0.0)
    ctx = NodeContext(cfg, items, Watched(), ingest, None, None)  # type: ignore[arg-type]
    role = ValidatorRole(ctx, validators[0])

    async def main() -> int:
        att = await role.score(3)
        assert att.round == 3 and att.encoders == ()
        return threading.get_ident()

    trio_thread = trio.run(main)
    assert threads == {trio_thread}
    assert store.get_round_state(3, "reveals") == b"{}"
    store.close()


def test_scoring_runs_on_one_blas_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validator's `score_round` runs with BLAS/OpenMP on one thread (node/validator.py:
    torch's pools made scoring's SVDs 15-80x slower in a process that had run torch)."""
    seen: list[int] = []

    def spy(*args: object, **kwargs: object) -> str:
        seen.extend(p["num_threads"] for p in threadpool_info())
        return "scored"

    monkeypatch.setattr(validator, "score_round", spy)
    assert validator.score_on_one_thread(1, x=2) == "scored"
    assert seen and set(seen) == {1}
