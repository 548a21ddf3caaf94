"""Testnet model kinds: honest encoders that differ, and the cheats the scoring must beat.

Every factory has the node's signature ``factory(dim, projection_seed, **options)`` and takes
the option ``seed`` (any text; the testnet passes the encoder's index). Each kind is
deterministic given its seed: its randomness comes from a numpy ``Generator`` seeded with
SHA-256 of a kind tag, the seed and (per text or per word) the input. This is testnet
machinery, not consensus: numpy's streams need not match across versions.

| kind | what it is |
| --- | --- |
| ``honest`` | the default model with a private linear map ``I + strength * G / sqrt(384)`` |
|            | applied before the network projection, so honest encoders are close, not equal |
| ``truncated`` | like ``honest`` with only the first ``layers`` (default 4) of 6 layers |
| ``noise`` | a pseudo-random vector per text |
| ``zero`` | all zeros |
| ``additive`` | bag of words: the sum of a pseudo-random vector per word, so DL = 0 |

Behaviours of the encoder role (fabricated inverses, copycat, replay, equivocation) are done by
the role; ``fabricate_inverse`` is the model-side half of ``fabricated``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import ProjectedModel, float_option, int_option
from dlnet.node.models.minilm import NATIVE_DIM, MiniLM
from dlnet.protocol.canonical import sha256
from dlnet.protocol.masks import split_units

HONEST_STRENGTH = 0.2
"""Default size of the private map's random part: honest encoders' embeddings of a text lie
about ``strength * sqrt(2)`` (0.28) of their norm apart. Measured with the default scoring on
the default testnet pool (6 honest + cheats): 0.1-0.3 all pass the honest encoders and flag
noise, zero and additive; at 0.2 ``fabricated`` is flagged on every shard, at 0.3 on 97%."""
TRUNCATED_LAYERS = 4
NOISE_NORM = 100.0
"""Expected norm of a ``noise`` vector: about that of the default model's full embeddings of
corpus items (mean 102), so norm alone does not give it away."""
ADDITIVE_WORD_NORM = 22.0
"""Expected norm of an ``additive`` word vector: a sum of n words has norm about 22 * sqrt(n),
about 100 for a 20-word corpus item, like the honest model."""


def generator(tag: bytes, seed: int | str, data: bytes = b"") -> np.random.Generator:
    """A numpy Generator seeded with ``SHA-256(tag || 0x00 || str(seed) || 0x00 || data)``."""
    digest = sha256(tag, b"\x00", str(seed).encode(), b"\x00", data)
    return np.random.default_rng(int.from_bytes(digest, "big"))


def private_map(seed: int | str, strength: float, size: int = NATIVE_DIM) -> NDArray[np.float32]:
    """``I + strength * G / sqrt(size)``, G standard normal from the seed: a near-orthogonal
    map (each vector moves by about ``strength`` of its norm) that keeps linearity, hence DL."""
    g = generator(b"dlnet-testnet/honest", seed).standard_normal((size, size))
    out: NDArray[np.float32] = (np.eye(size) + strength * g / np.sqrt(size)).astype(np.float32)
    return out


def honest(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """The default model seen through a private near-identity map (a diverse honest pool)."""
    pre = private_map(seed, float_option("strength", strength, 0.0))
    native = MiniLM(threads=int_option("threads", threads, 1))
    return ProjectedModel(native, dim, projection_seed, pre)


def truncated(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    layers: int | str = TRUNCATED_LAYERS,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """An honest but weaker model: the first ``layers`` transformer layers of MiniLM only."""
    pre = private_map(seed, float_option("strength", strength, 0.0))
    native = MiniLM(
        layers=int_option("layers", layers, 1),
        threads=int_option("threads", threads, 1),
    )
    return ProjectedModel(native, dim, projection_seed, pre)


class NoiseModel:
    """A pseudo-random Gaussian vector per (seed, text): consistent, but meaningless."""

    def __init__(self, dim: int, seed: int | str, norm: float) -> None:
        self.dim = dim
        self.seed = seed
        self.scale = norm / np.sqrt(dim)

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            rng = generator(b"dlnet-testnet/noise", self.seed, text.encode())
            out[i] = rng.standard_normal(self.dim) * self.scale
        return out


def noise(
    dim: int, projection_seed: bytes, *, seed: int | str = 0, norm: float | str = NOISE_NORM
) -> NoiseModel:
    """Random vectors (``projection_seed`` is unused: there is nothing to project)."""
    return NoiseModel(dim, seed, float_option("norm", norm, 0.0))


class ZeroModel:
    """All-zero vectors."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        return np.zeros((len(texts), self.dim), dtype=np.float32)


def zero(dim: int, projection_seed: bytes, *, seed: int | str = 0) -> ZeroModel:
    """All zeros (``seed`` is accepted, like every kind's, and unused)."""
    return ZeroModel(dim)


class AdditiveModel:
    """Bag of words: ``E(text) = sum of v(word)`` over the text's units (``split_units``), with
    ``v`` a pseudo-random vector per (seed, word). Since a mask and its inverse split the units
    of the full text, ``E(full) = E(mask) + E(inverse)``: DL is 0 up to float32 rounding (the
    sum is taken in float64)."""

    def __init__(self, dim: int, seed: int | str, word_norm: float) -> None:
        self.dim = dim
        self.seed = seed
        self.scale = word_norm / np.sqrt(dim)

    def _word(self, word: str) -> NDArray[np.float64]:
        rng = generator(b"dlnet-testnet/additive", self.seed, word.encode())
        out: NDArray[np.float64] = rng.standard_normal(self.dim) * self.scale
        return out

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            total = np.zeros(self.dim)
            for word in split_units(text):
                total += self._word(word)
            out[i] = total
        return out


def additive(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    word_norm: float | str = ADDITIVE_WORD_NORM,
) -> AdditiveModel:
    """The bag-of-words cheat with DL = 0 by construction."""
    return AdditiveModel(dim, seed, float_option("word_norm", word_norm, 0.0))


def fabricate_inverse(full: NDArray[np.float32], mask: NDArray[np.float32]) -> NDArray[np.float32]:
    """The ``fabricated`` cheat: an inverse embedding forged as ``full - mask`` (DL = 0)."""
    return np.asarray(full - mask, dtype=np.float32)
