"""The encoder role's vector behaviours: ``fabricated``, every inverse slot forged from its
shard's full and mask embeddings, exactly (``fabricated``) or off by a relative jitter
(``fabricated@J``); ``leaky``, the full mixed into the halves."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from dlnet.node.adversaries import parse_behaviour
from dlnet.node.context import NodeContext
from dlnet.node.encoder import EncoderRole
from dlnet.node.store import Store
from dlnet.protocol.config import ValidatorEntry, default_config
from dlnet.protocol.wire import Probe

ITEMS = tuple(
    f"item {i} says that the quick brown fox number {i} jumps over lazy dog {i} again"
    for i in range(20)
)


class HashModel:
    """A distinct pseudo-random vector per text (no DL structure of its own)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim) * 30
        return out


def vectors(behaviour: str) -> tuple[Any, np.ndarray]:
    cfg = default_config((ValidatorEntry(bytes(32), 1),), 0, dataset_sha256=bytes(32))
    store = Store.open(Path(tempfile.mkdtemp()) / "node.sqlite")  # no schedule held: corpus only
    ctx = NodeContext(cfg, ITEMS, store, None, None, None, threads=False)  # type: ignore[arg-type]
    role = EncoderRole(ctx, None, HashModel(cfg.dim), behaviour)  # type: ignore[arg-type]
    return cfg, trio.run(role._vectors, 1, None)


def relative_gaps(cfg: Any, vecs: np.ndarray) -> list[float]:
    """||full - mask - inverse|| / ||full|| for every (shard, mask)."""
    gaps = []
    for base in range(0, len(vecs), cfg.slots_per_shard):
        full = vecs[base].astype(np.float64)
        for m in range(cfg.masks_per_shard):
            mask, inverse = vecs[base + 2 * m + 1], vecs[base + 2 * m + 2]
            gaps.append(float(np.linalg.norm(full - mask - inverse) / np.linalg.norm(full)))
    return gaps


def test_fabricated_inverse_is_exactly_full_minus_mask() -> None:
    cfg, vecs = vectors("fabricated")
    for base in range(0, len(vecs), cfg.slots_per_shard):
        for m in range(cfg.masks_per_shard):
            expected = vecs[base] - vecs[base + 2 * m + 1]
            assert np.array_equal(vecs[base + 2 * m + 2], expected)


@pytest.mark.parametrize("jitter", [0.05, 0.2])
def test_fabricated_jitter_sets_each_inverse_off_by_jitter(jitter: float) -> None:
    cfg, vecs = vectors(f"fabricated@{jitter}")
    gaps = relative_gaps(cfg, vecs)
    assert len(gaps) == cfg.shards_per_round * cfg.masks_per_shard
    assert gaps == pytest.approx([jitter] * len(gaps), rel=1e-4)


def test_honest_inverse_is_the_models() -> None:
    cfg, vecs = vectors("honest")
    assert min(relative_gaps(cfg, vecs)) > 0.5


@pytest.mark.parametrize(("behaviour", "leak"), [("leaky", 0.5), ("leaky@0.2", 0.2)])
def test_leaky_mixes_the_full_into_the_halves_and_keeps_the_residual(
    behaviour: str, leak: float
) -> None:
    cfg, honest = vectors("honest")
    _, leaky = vectors(behaviour)
    per = cfg.slots_per_shard
    for base in range(0, len(honest), per):
        full = honest[base].astype(np.float64)
        assert np.allclose(leaky[base], (1 + 2 * leak) * full, rtol=1e-5)
        for slot in range(base + 1, base + per):
            assert np.allclose(leaky[slot], honest[slot] + leak * full, rtol=1e-5, atol=1e-3)
    gaps = zip(relative_gaps(cfg, honest), relative_gaps(cfg, leaky), strict=True)
    shrink = [h / k for h, k in gaps]
    assert shrink == pytest.approx([1 + 2 * leak] * len(shrink), rel=1e-3)


def test_behaviour_levels_are_checked() -> None:
    assert parse_behaviour("leaky") == ("leaky", 0.5)
    assert parse_behaviour("leaky@0") == ("leaky", 0.0)
    assert parse_behaviour("fabricated") == ("fabricated", 0.0)
    for bad in ("leaky@-1", "leaky@nan", "copycat@1", "sneaky"):
        with pytest.raises(ValueError):
            parse_behaviour(bad)


@pytest.mark.parametrize("behaviour", ["fabricated", "leaky@0.5"])
def test_a_probes_halves_follow_the_shards_as_the_model_embeds_them(behaviour: str) -> None:
    """With the round's probe held, its halves are embedded in the same call, after the
    shards, and no behaviour reshapes them: a probe has no full to forge or leak from."""
    cfg = default_config((ValidatorEntry(bytes(32), 1),), 0, dataset_sha256=bytes(32))
    store = Store.open(Path(tempfile.mkdtemp()) / "node.sqlite")
    ctx = NodeContext(cfg, ITEMS, store, None, None, None, threads=False)  # type: ignore[arg-type]
    model = HashModel(cfg.dim)
    role = EncoderRole(ctx, None, model, behaviour)  # type: ignore[arg-type]
    halves = ("the quick fox", "brown jumps", "over a dog", "lazy again")
    probe = Probe(cfg.network_id, 1, bytes(32), halves, bytes(32), bytes(64))
    vecs = trio.run(role._vectors, 1, probe)
    listed = cfg.shards_per_round * cfg.slots_per_shard
    assert vecs.shape == (listed + len(halves), cfg.dim)
    assert np.array_equal(vecs[listed:], model.embed(list(halves)))
    assert np.array_equal(vecs[:listed], trio.run(role._vectors, 1, None))
