"""One encoder's signed round for tests: every (shard, slot) embedding of a round and the
commit that lists them, built the way an encoder builds them."""

from __future__ import annotations

import numpy as np

from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.identity import SigningKey
from dlnet.protocol.wire import Commit, Embedding, make_embedding, sign_commit


def signed_round(
    cfg: NetworkConfig, key: SigningKey, rnd: int, rng: np.random.Generator
) -> tuple[Commit, list[Embedding]]:
    """``key``'s commit and reveals of round ``rnd``: random unit-free vectors from ``rng``,
    a distinct random salt per reveal (so two calls never share a commitment)."""
    reveals = [
        make_embedding(
            key,
            cfg.network_id,
            rnd,
            shard,
            slot,
            rng.bytes(16),
            rng.standard_normal(cfg.dim).astype(np.float32),
        )
        for shard in range(cfg.shards_per_round)
        for slot in range(cfg.slots_per_shard)
    ]
    commit = sign_commit(key, cfg.network_id, rnd, tuple(e.commitment() for e in reveals))
    return commit, reveals
