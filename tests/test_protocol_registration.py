"""Registration work (protocol/registration.py): bound to the key and the network."""

from __future__ import annotations

import hashlib

import pytest

from dlnet.protocol.registration import leading_zero_bits, solve, valid, work

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
