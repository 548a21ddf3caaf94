"""Admission (node/ingest.py) against a real store: every outcome and what it counts."""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import trio

from dlnet.node import ingest as ingest_module
from dlnet.node.ingest import COMMIT_GRACE, Ingest, Outcome
from dlnet.node.store import Store
from dlnet.node.transport import Verdict
from dlnet.protocol.config import NetworkConfig, ValidatorEntry, default_config
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.registration import solve, valid
from dlnet.protocol.rounds import round_times
from dlnet.protocol.wire import Commit, Embedding, Kind, encode, make_embedding, sign_commit

ENCODER = SigningKey.from_seed(b"\x02" * 32)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def cfg() -> NetworkConfig:
    validator = SigningKey.from_seed(b"\x01" * 32)
    return default_config(
        [ValidatorEntry(validator.public_key, 1)],
        1_800_000_000,
        dataset_sha256=bytes(32),
        registration=RegistrationParams(difficulty=DIFFICULTY),
    )


DIFFICULTY = 3  # 8 scrypt evaluations on average: a real proof, quick to find


@functools.cache
def proof(network_id: bytes, key: bytes) -> int:
    return solve(network_id, key, DIFFICULTY)


@pytest.fixture
def node(cfg: NetworkConfig, tmp_path: Path) -> tuple[Ingest, Store, Clock]:
    store = Store.open(tmp_path / "node.sqlite")
    clock = Clock(round_times(cfg, 5).start + 1)
    return Ingest(cfg, store, clock), store, clock


def commit(cfg: NetworkConfig, rnd: int, fill: int = 0, nonce: int | None = None) -> Commit:
    n = cfg.shards_per_round * cfg.slots_per_shard
    hashes = tuple(bytes([fill, i]) * 16 for i in range(n))
    if nonce is None:
        nonce = proof(cfg.network_id, ENCODER.public_key)
    return sign_commit(ENCODER, cfg.network_id, rnd, hashes, nonce)


def reveal(cfg: NetworkConfig, rnd: int, value: float = 1.0) -> Embedding:
    vec = np.full(cfg.dim, value, dtype=np.float32)
    return make_embedding(ENCODER, cfg.network_id, rnd, 0, 0, os.urandom(16), vec)


def counters(store: Store) -> dict[str, int]:
    return dict(store.counters())


def test_gossip_path_accepts_then_ignores_the_same_bytes(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    ingest, store, _ = node
    data = encode(commit(cfg, 5))
    assert ingest.check(Kind.COMMIT, data) is Verdict.ACCEPT
    assert ingest.admit_checked(data) is Outcome.NEW
    assert store.messages(Kind.COMMIT, 5) == [data]
    assert ingest.check(Kind.COMMIT, data) is Verdict.IGNORE
    # The proof is evaluated once, at the first check; the duplicate is not decoded again.
    assert counters(store) == {
        "proof:evaluated": 1,
        "accepted:commit": 1,
        "ignored:duplicate": 1,
    }


def test_sync_duplicates_are_counted_apart_from_gossip_resends(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    ingest, store, _ = node
    data = encode(reveal(cfg, 5))
    assert ingest.admit(data, Kind.EMBEDDING, window=False) is Outcome.NEW
    assert ingest.admit(data, Kind.EMBEDDING, window=False) is Outcome.DUPLICATE
    assert ingest.admit(data, Kind.EMBEDDING) is Outcome.DUPLICATE
    assert counters(store) == {
        "accepted:embedding": 1,
        "sync:duplicate": 1,
        "ignored:duplicate": 1,
    }


def test_two_different_signed_messages_for_one_slot_are_kept_as_evidence(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    ingest, store, _ = node
    first, second = encode(reveal(cfg, 5, 1.0)), encode(reveal(cfg, 5, 2.0))
    assert ingest.admit(first, Kind.EMBEDDING) is Outcome.NEW
    assert ingest.admit(second, Kind.EMBEDDING) is Outcome.EQUIVOCATION
    assert store.equivocators(5) == {ENCODER.public_key}
    assert store.messages(Kind.EMBEDDING, 5) == [first]
    assert counters(store)["evidence:equivocation_embedding"] == 1


def test_a_third_signed_message_for_an_equivocated_place_is_not_relayed(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    """Gossip relays the first two versions of a place (the evidence spreads); a third,
    fourth... is ignored before relaying: each is a new id, and relaying them all let one
    signer flood the topic."""
    ingest, store, _ = node
    versions = [encode(commit(cfg, 5, fill=f)) for f in range(4)]
    assert ingest.check(Kind.COMMIT, versions[0]) is Verdict.ACCEPT
    ingest.admit_checked(versions[0])
    assert ingest.check(Kind.COMMIT, versions[1]) is Verdict.ACCEPT
    assert ingest.admit_checked(versions[1]) is Outcome.EQUIVOCATION
    for later in versions[2:]:
        assert ingest.check(Kind.COMMIT, later) is Verdict.IGNORE
    assert store.equivocators(5) == {ENCODER.public_key}
    assert counters(store)["ignored:equivocation_known"] == 2
    # Another place of the same signer is untouched.
    assert ingest.check(Kind.EMBEDDING, encode(reveal(cfg, 5))) is Verdict.ACCEPT


def test_rounds_outside_the_window_are_ignored_by_gossip_not_by_catch_up(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    ingest, store, clock = node
    clock.t = round_times(cfg, 9).start + 1  # window: rounds 7..10
    old, future = encode(reveal(cfg, 6)), encode(reveal(cfg, 11))
    assert ingest.check(Kind.EMBEDDING, old) is Verdict.IGNORE
    assert ingest.check(Kind.EMBEDDING, future) is Verdict.IGNORE
    assert ingest.admit(old, Kind.EMBEDDING, window=False) is Outcome.NEW
    assert counters(store) == {
        "ignored:old_round": 1,
        "ignored:future_round": 1,
        "accepted:embedding": 1,
    }


@pytest.mark.parametrize("window", [True, False])
def test_a_commit_first_seen_after_its_deadline_never_counts_however_it_came(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock], window: bool
) -> None:
    """After the deadline reveals go public: a commit made then could list copies of them.
    Pulled by sync or gossiped, it is ignored alike."""
    ingest, store, clock = node
    deadline = round_times(cfg, 5).commit_deadline
    clock.t = deadline + COMMIT_GRACE
    on_time = encode(commit(cfg, 5, fill=1))
    assert ingest.admit(on_time, Kind.COMMIT, window=window) is Outcome.NEW
    clock.t = deadline + COMMIT_GRACE + 0.01
    late = encode(commit(cfg, 5, fill=2))
    assert ingest.admit(late, Kind.COMMIT, window=window) is Outcome.IGNORED
    assert ingest.check(Kind.COMMIT, late) is Verdict.IGNORE
    assert store.messages(Kind.COMMIT, 5) == [on_time]
    assert counters(store)["ignored:late_commit"] == 2


def test_malformed_bytes_are_rejected_and_counted_by_reason(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock]
) -> None:
    ingest, store, _ = node
    data = encode(reveal(cfg, 5))
    forged = data[:-1] + bytes([data[-1] ^ 1])
    assert ingest.check(Kind.EMBEDDING, b"\xc1") is Verdict.REJECT
    assert ingest.check(Kind.EMBEDDING, forged) is Verdict.REJECT
    assert ingest.check(Kind.EMBEDDING, encode(commit(cfg, 5))) is Verdict.REJECT
    assert ingest.check(Kind.COMMIT, data) is Verdict.REJECT  # larger than any commit
    assert ingest.admit(forged, None) is Outcome.REJECTED
    assert store.messages(Kind.EMBEDDING, 5) == []
    assert counters(store) == {
        "rejected:malformed": 1,
        "rejected:bad_signature": 2,
        "rejected:wrong_kind": 1,
        "rejected:oversize": 1,
    }


def bad_nonce(cfg: NetworkConfig) -> int:
    """A nonce just past ENCODER's valid one that fails the proof at DIFFICULTY."""
    good = proof(cfg.network_id, ENCODER.public_key)
    return next(
        n
        for n in range(good + 1, good + 100)
        if not valid(cfg.network_id, ENCODER.public_key, n, DIFFICULTY)
    )


def test_a_commit_without_a_valid_registration_proof_is_rejected_and_counted(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, store, _ = node
    good = proof(cfg.network_id, ENCODER.public_key)
    bad = bad_nonce(cfg)
    assert ingest.check(Kind.COMMIT, encode(commit(cfg, 5, nonce=bad))) is Verdict.REJECT
    assert ingest.admit(encode(commit(cfg, 5, fill=3, nonce=bad)), Kind.COMMIT) is Outcome.REJECTED
    assert store.messages(Kind.COMMIT, 5) == []
    # One scrypt evaluation for the (key, nonce): the second commit with it hits the cache.
    assert counters(store) == {"rejected:bad_registration": 2, "proof:evaluated": 1}
    # A valid proof is computed once per (key, nonce), then remembered: no scrypt per commit.
    calls: list[int] = []
    real = ingest_module.work
    monkeypatch.setattr(ingest_module, "work", lambda *a: calls.append(1) or real(*a))
    assert ingest.check(Kind.COMMIT, encode(commit(cfg, 5, nonce=good))) is Verdict.ACCEPT
    assert ingest.check(Kind.COMMIT, encode(commit(cfg, 6, nonce=good))) is Verdict.ACCEPT
    assert len(calls) == 1
    # Difficulty 0 (a private test network): every nonce registers, nothing is computed.
    free = dataclasses.replace(cfg, registration=RegistrationParams(difficulty=0))
    assert Ingest(free, store, node[2]).proofs.valid(commit(free, 5, nonce=bad))
    assert len(calls) == 1


def test_the_commit_topic_checks_a_new_proof_off_the_event_loop(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check_async` runs the scrypt in a worker thread: the event loop goes on meanwhile
    (here the evaluation waits for a trio task, which could never run if it blocked the
    loop), and the commit is accepted once its proof is known."""
    ingest, store, _ = node
    data = encode(commit(cfg, 5))
    ran_meanwhile = threading.Event()
    real = ingest_module.work

    def slow_work(*args: bytes | int) -> bytes:
        assert ran_meanwhile.wait(timeout=30), "the event loop was blocked by the proof"
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "work", slow_work)
    verdicts: list[Verdict] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def checked() -> None:
                verdicts.append(await ingest.check_async(Kind.COMMIT, data))

            nursery.start_soon(checked)
            await trio.sleep(0)  # the check starts and waits on its worker thread
            await trio.sleep(0)
            ran_meanwhile.set()

    trio.run(main)
    assert verdicts == [Verdict.ACCEPT]
    assert ingest.admit_checked(data) is Outcome.NEW
    assert counters(store) == {"proof:evaluated": 1, "accepted:commit": 1}


def test_concurrent_checks_of_one_key_share_one_evaluation(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of one commit arriving while its proof is evaluated are duplicates (decoded
    and verified once); another commit of the same key waits for the same evaluation."""
    ingest, store, _ = node
    first, other_round = encode(commit(cfg, 5)), encode(commit(cfg, 6))
    calls: list[int] = []
    real = ingest_module.work
    monkeypatch.setattr(ingest_module, "work", lambda *a: calls.append(1) or real(*a))
    verdicts: dict[str, Verdict] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name, data in (("first", first), ("copy", first), ("other", other_round)):

                async def checked(name: str = name, data: bytes = data) -> None:
                    verdicts[name] = await ingest.check_async(Kind.COMMIT, data)

                nursery.start_soon(checked)

    trio.run(main)
    # Trio starts the tasks in any order: one copy is checked, the other is its duplicate.
    assert {verdicts["first"], verdicts["copy"]} == {Verdict.ACCEPT, Verdict.IGNORE}
    assert verdicts["other"] is Verdict.ACCEPT
    assert len(calls) == 1
    assert ingest.verifies[Kind.COMMIT] == 2  # the copy was not verified again
    assert counters(store) == {"proof:evaluated": 1, "ignored:duplicate": 1}


def test_the_commit_topic_rejects_a_bad_proof_and_a_forged_commit_costs_no_scrypt(
    cfg: NetworkConfig, node: tuple[Ingest, Store, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, store, _ = node
    bad = bad_nonce(cfg)
    signed = encode(commit(cfg, 5))
    forged = signed[:-1] + bytes([signed[-1] ^ 1])
    calls: list[int] = []
    real = ingest_module.work
    monkeypatch.setattr(ingest_module, "work", lambda *a: calls.append(1) or real(*a))

    async def main() -> list[Verdict]:
        return [
            await ingest.check_async(Kind.COMMIT, forged),
            await ingest.check_async(Kind.COMMIT, encode(commit(cfg, 5, nonce=bad))),
        ]

    assert trio.run(main) == [Verdict.REJECT, Verdict.REJECT]
    assert len(calls) == 1  # the forged one failed its signature before any scrypt
    assert counters(store) == {
        "rejected:bad_signature": 1,
        "rejected:bad_registration": 1,
        "proof:evaluated": 1,
    }
