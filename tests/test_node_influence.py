"""The validator derives earned influence from the certificates it stores (issue 10)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

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
