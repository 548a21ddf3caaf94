"""The testnet kinds of issue 10: `scaled` (honest x factor) and `cheapcopy` (near-identical
copies of one cheap model), and how the scoring's duplicate rule sees them."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from dlnet.node.models.kinds import cheapcopy, honest, scaled
from dlnet.protocol.config import DEFAULT_PROJECTION_SEED
from dlnet.protocol.params import ScoringParams

# MiniLM-based kinds: on the worker that loads MiniLM (tests/test_models.py).
pytestmark = pytest.mark.xdist_group("minilm")

TEXTS = [
    "the cat sat on the mat",
    "stock markets fell sharply on monday",
    "a recipe for bread needs flour water and yeast",
]
DIM = 256


def cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    x, y = a.astype(np.float64), b.astype(np.float64)
    out: NDArray[np.float64] = np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1)
    return out / np.linalg.norm(y, axis=1)


def test_scaled_is_the_honest_model_times_its_factor() -> None:
    base = honest(DIM, DEFAULT_PROJECTION_SEED, seed=3).embed(TEXTS)
    big = scaled(DIM, DEFAULT_PROJECTION_SEED, seed=3, factor="1e6").embed(TEXTS)
    assert np.allclose(big, base.astype(np.float64) * 1e6, rtol=1e-6)


def test_cheap_copies_are_near_duplicates_but_not_identical() -> None:
    copies = [cheapcopy(DIM, DEFAULT_PROJECTION_SEED, seed=i).embed(TEXTS) for i in range(3)]
    other = honest(DIM, DEFAULT_PROJECTION_SEED, seed=0).embed(TEXTS)
    dup = ScoringParams().duplicate_cos
    for i in range(1, 3):
        assert copies[i].tobytes() != copies[0].tobytes()
        assert (cosines(copies[i], copies[0]) > dup).all()
    assert (cosines(copies[0], other) < dup).all()
