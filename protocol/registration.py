"""Registration work: a memory-hard proof of work bound to an encoder key and a network.

Defined and benchmarked (docs/BENCHMARKS.md, "Registration work"); NOT yet required by
admission: no message carries it and no node checks it (issue 10's bounded encoder set, with
replacement of the lowest-ranked past an immunity period, is still open).

``work(network_id, key, nonce) = scrypt(password = "dlnet/v1/registration" || network_id ||
key || u64be(nonce), salt = network_id, n = 2^14, r = 8, p = 1, dklen = 32)`` (RFC 7914, 16 MiB
of memory per evaluation, so a GPU or ASIC gains far less over a laptop than on SHA-256). A
nonce is valid at ``difficulty`` d when the first d bits of the work are 0: a key costs 2^d
evaluations on average to register and one to verify.
"""

from __future__ import annotations

import hashlib
from typing import Final

REGISTRATION_TAG: Final = b"dlnet/v1/registration"
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MAX_NONCE: Final = 2**64 - 1


def work(network_id: bytes, key: bytes, nonce: int) -> bytes:
    """The 32-byte scrypt work of one nonce (see the module docstring)."""
    if not 0 <= nonce <= MAX_NONCE:
        raise ValueError(f"nonce {nonce} outside 0..2^64-1")
    password = REGISTRATION_TAG + network_id + key + nonce.to_bytes(8, "big")
    return hashlib.scrypt(
        password, salt=network_id, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20, dklen=32
    )


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def valid(network_id: bytes, key: bytes, nonce: int, difficulty: int) -> bool:
    """Whether ``nonce`` registers ``key`` on the network at ``difficulty`` (one evaluation)."""
    return 0 <= nonce <= MAX_NONCE and leading_zero_bits(work(network_id, key, nonce)) >= difficulty


def solve(network_id: bytes, key: bytes, difficulty: int, start: int = 0) -> int:
    """The first valid nonce from ``start`` on (2^difficulty evaluations on average)."""
    nonce = start
    while leading_zero_bits(work(network_id, key, nonce)) < difficulty:
        nonce += 1
    return nonce
