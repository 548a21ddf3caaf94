"""Registration work (protocol/registration.py): bound to the key and the network."""

from __future__ import annotations

import hashlib

import pytest
from test_protocol_influence import result

from dlnet.protocol.params import RegistrationParams
from dlnet.protocol.registration import (
    Registry,
    admit,
    counted,
    genesis_registry,
    leading_zero_bits,
    records,
    records_for_round,
    solve,
    valid,
    work,
)

NET, OTHER = bytes(32), bytes([1]) * 32
KEY = bytes([7]) * 32


def test_work_is_scrypt_of_the_tagged_key_and_nonce() -> None:
    want = hashlib.scrypt(
        b"dlnet/v1/registration" + NET + KEY + (5).to_bytes(8, "big"),
        salt=NET,
        n=2**14,
        r=8,
        p=1,
        maxmem=64 * 2**20,
        dklen=32,
    )
    assert work(NET, KEY, 5) == want
    with pytest.raises(ValueError, match="outside"):
        work(NET, KEY, -1)


def test_leading_zero_bits() -> None:
    assert leading_zero_bits(bytes(32)) == 256
    assert leading_zero_bits(b"\x80" + bytes(31)) == 0
    assert leading_zero_bits(b"\x00\x10" + bytes(30)) == 11


def test_a_solved_nonce_is_valid_only_for_its_key_and_network() -> None:
    nonce = solve(NET, KEY, 4)
    assert valid(NET, KEY, nonce, 4)
    assert all(not valid(NET, KEY, n, 4) for n in range(nonce))  # the first one
    assert leading_zero_bits(work(NET, KEY, nonce)) >= 4
    # Bound: the same nonce for another key or network is valid only by chance (1 in 16).
    others = [valid(OTHER, KEY, nonce, 4), valid(NET, bytes([8]) * 32, nonce, 4)]
    assert others.count(True) <= 1
    assert not valid(NET, KEY, 2**64, 0)


# --- the registered set (docs/PROTOCOL.md §2.7) ------------------------------------------------


def key(i: int) -> bytes:
    return bytes([i]) * 32


PARAMS = RegistrationParams(max_encoders=3, difficulty=0, immunity_rounds=2)


def test_genesis_registers_the_seeds_and_newcomers_take_free_places_best_first() -> None:
    reg = genesis_registry([key(2), key(1)])
    assert reg == Registry(0, ((key(1), 0), (key(2), 0)))
    # Two newcomers, one free place: the better-scored one enters.
    after = admit(reg, result(1, {key(1): 9, key(5): 100, key(4): 200}), {}, PARAMS)
    assert after.members == ((key(1), 0), (key(2), 0), (key(4), 1))
    assert after.round == 1 and after.digest() != reg.digest()
    with pytest.raises(ValueError, match="applied after"):
        admit(after, result(1, {}), {}, PARAMS)


def test_a_full_set_replaces_its_lowest_past_immunity_only_for_a_better_newcomer() -> None:
    reg = Registry(4, ((key(1), 0), (key(2), 3), (key(3), 0)))
    influence = {key(1): 50_000, key(2): 10, key(3): 20_000}
    # Round 5: key 2 entered in round 3 (immune until 3 + 2 = 5: no longer). The lowest past
    # immunity is key 2 (influence 10); a newcomer scoring 0 cannot replace it, 11 can.
    assert admit(reg, result(5, {key(9): 0}), influence, PARAMS).keys() == reg.keys()
    swapped = admit(reg, result(5, {key(9): 11, key(8): 0}), influence, PARAMS)
    assert swapped.members == ((key(1), 0), (key(3), 0), (key(9), 5))
    # Round 4: key 2 is still immune, so key 3 (20,000) is the lowest that may go.
    immune = Registry(3, reg.members)
    assert admit(immune, result(4, {key(9): 30_000}), influence, PARAMS).keys() == {
        key(1),
        key(2),
        key(9),
    }
    # Nobody past immunity: nobody enters, whatever it scored.
    young = Registry(4, ((key(1), 4), (key(2), 4), (key(3), 4)))
    assert admit(young, result(5, {key(9): 65_535}), {}, PARAMS).keys() == young.keys()


def test_counted_bounds_the_scored_encoders_and_orders_newcomers_by_work() -> None:
    reg = Registry(2, ((key(1), 0), (key(2), 1)))
    committed = {key(1): b"\x00", key(7): b"\x05", key(8): b"\x01", key(9): b"\x03"}
    # One free place, nobody past immunity at round 2 (key 1 entered at 0: 0 + 2 <= 2, so it
    # is): openings = 1 + 1 = 2, the two newcomers of least work.
    assert counted(reg, 2, committed, PARAMS) == (key(1), key(8), key(9))
    assert counted(reg, 1, committed, PARAMS) == (key(1), key(8))
    full = Registry(2, ((key(1), 2), (key(2), 2), (key(3), 2)))
    assert counted(full, 3, committed, PARAMS) == (key(1),)  # members only
    # However many newcomers commit, at most 2 * max_encoders are scored.
    many = {key(i): bytes([i]) for i in range(10, 60)}
    assert len(counted(genesis_registry([]), 1, many, PARAMS)) == PARAMS.max_encoders
    assert PARAMS.listed_limit == 2 * PARAMS.max_encoders


def test_records_chain_the_influence_and_the_set_and_drop_a_replaced_record() -> None:
    params = RegistrationParams(max_encoders=2, difficulty=0, immunity_rounds=1)
    seeds = [key(1)]
    chain = [
        result(1, {key(1): 60_000, key(2): 0}),
        result(2, {key(1): 60_000, key(2): 0, key(3): 50_000}),
        result(4, {key(1): 60_000, key(3): 50_000}),
    ]
    influence, registry = records(seeds, reversed(chain), 4, params)
    # Round 1: key 2 took the free place (score 0, influence 0). Round 2: key 3 (50,000)
    # replaced it (past immunity, lowest, 0 < 50,000); key 2's record is gone.
    assert registry.members == ((key(1), 0), (key(3), 2))
    assert influence.of(key(2)) == 0 and influence.of(key(3)) > 0
    assert influence.round == registry.round == 4
    # The same chain derives the same state, whatever order it is given in; `upto` cuts it.
    assert records(seeds, chain, 4, params) == (influence, registry)
    assert records(seeds, chain, 1, params)[1].keys() == {key(1), key(2)}
    # Round r is scored with the records after round r - 2.
    assert records_for_round(seeds, chain, 4, params) == records(seeds, chain, 2, params)
    assert records_for_round(seeds, chain, 2, params)[1] == genesis_registry(seeds)


def test_params_problems() -> None:
    assert RegistrationParams().problems() == []
    bad = RegistrationParams(max_encoders=0, difficulty=-1, immunity_rounds=-1)
    assert [f for f, _ in bad.problems()] == ["max_encoders", "difficulty", "immunity_rounds"]
    assert all(" — " in text for _, text in bad.problems())


def test_difficulty_zero_accepts_any_nonce_without_work() -> None:
    assert valid(NET, KEY, 123, 0)
    assert not valid(NET, KEY, -1, 0)
    assert solve(NET, KEY, 0, start=77) == 77
    seen: list[int] = []
    nonce = solve(NET, KEY, 2, progress=seen.append)
    assert seen == list(range(1, nonce + 1))
