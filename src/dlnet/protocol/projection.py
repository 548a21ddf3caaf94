"""The network projection: one fixed linear map from a model's own space into the network's.

Every encoder of a network, whatever its model, passes its native vectors through the same
matrix, derived from the network config's ``projection_seed`` alone. Because the map is linear,
the composition identity ``E(full) - E(mask) ≈ E(inverse)`` survives it unchanged in form, and
because it is a random sign (Rademacher) matrix scaled by ``1/sqrt(out_dim)``, it keeps norms and
distances in expectation (Johnson-Lindenstrauss), so differential loss and LOF mean the same
before and after it.

The matrix is specified bit for bit (SHA-256 in counter mode, the same stream construction as
``masks.Drbg``). Row ``r`` depends only on ``r`` and ``out_dim``, so the matrix of a smaller
model is the leading rows of a larger model's. Applying it (a float32 matrix product) need not be
bit-exact across machines: embeddings are measured, never hashed into consensus.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.canonical import sha256, u64be

PROJECTION_TAG = b"dlnet/v1/projection"


def projection_stream(seed: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` of ``block_0 || block_1 || ...``,
    ``block_i = SHA-256(seed || b"dlnet/v1/projection" || u64be(i))``."""
    blocks = -(-nbytes // 32)
    return b"".join(sha256(seed, PROJECTION_TAG, u64be(i)) for i in range(blocks))[:nbytes]


def projection_matrix(seed: bytes, in_dim: int, out_dim: int) -> NDArray[np.float32]:
    """The (in_dim, out_dim) float32 matrix P with ``P[r, c] = (1 - 2*b_j) * s``.

    ``j = r * out_dim + c`` (row-major), ``b_j`` = bit j of the projection stream, most
    significant bit of each byte first; ``s = float32(1 / sqrt(out_dim))`` (both the square root
    and the division are correctly rounded IEEE-754 double operations, then rounded to float32).
    The returned array is read-only.
    """
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"projection_matrix: dimensions must be positive, got {in_dim}x{out_dim}")
    nbits = in_dim * out_dim
    stream = np.frombuffer(projection_stream(seed, -(-nbits // 8)), dtype=np.uint8)
    bits = np.unpackbits(stream, bitorder="big")[:nbits].reshape(in_dim, out_dim)
    scale = np.float32(1.0 / math.sqrt(out_dim))
    matrix = np.where(bits == 0, scale, -scale).astype(np.float32)
    matrix.setflags(write=False)
    return matrix
