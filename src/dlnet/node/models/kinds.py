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
| ``finetuned`` | like ``honest`` with MiniLM's shipped BitFit fine-tune (``scripts/finetune.py``) |
| ``truncated`` | like ``honest`` with only the first ``layers`` (default 4) of 6 layers |
| ``noisy`` | the ``honest`` output plus Gaussian noise of ``level`` (default 1) x its scale |
| ``random_init`` | like ``honest`` with the MiniLM architecture at seeded random weights |
| ``static`` | like ``honest`` on the input word-piece vectors (no context), summed or averaged |
| ``noise`` | a pseudo-random vector per text |
| ``zero`` | all zeros |
| ``additive`` | bag of words: the sum of a pseudo-random vector per word, so DL = 0 |
| ``scaled`` | the ``honest`` output multiplied by ``factor`` (default 7): length, not content |
| ``cheapcopy`` | one cheap model (``static`` mean pooling behind ONE shared private map) whose |
|               | copies differ only by tiny noise of ``level`` (default 0.01) x its scale |

Behaviours of the encoder role (fabricated inverses, copycat, replay, equivocation) are done by
the role; ``fabricate_inverse`` is the vector half of ``fabricated``, ``jitter_option`` its level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import NativeModel, ProjectedModel, float_option, int_option
from dlnet.node.models.minilm import NATIVE_DIM, MiniLM, Pooling, check_layers
from dlnet.protocol.canonical import sha256
from dlnet.protocol.masks import split_units

HONEST_STRENGTH = 0.2
"""Default size of the private map's random part: honest encoders' embeddings of a text lie
about ``strength * sqrt(2)`` (0.28) of their norm apart. Measured with the default scoring on
the default testnet pool (6 honest + cheats): 0.1-0.3 all pass the honest encoders and flag
noise, zero and additive; at 0.2 ``fabricated`` is flagged on every shard, at 0.3 on 97%."""
TRUNCATED_LAYERS = 4
NOISY_LEVEL = 1.0
NOISE_NORM = 100.0
"""Expected norm of a ``noise`` vector: about that of the default model's full embeddings of
corpus items (mean 102), so norm alone does not give it away."""
SCALED_FACTOR = 7.0
"""Default ``factor`` of ``scaled``: issue 10 measured the honest model x 7 holding 51 % of a
plain weighted mean with 13 % of the weight."""
CHEAPCOPY_LEVEL = 0.01
"""Default noise ``level`` of ``cheapcopy``: each vector moves by about 1 % of its norm, a cosine
of about 0.99995 between copies (above the scoring's duplicate_cos, 0.999)."""
CHEAPCOPY_MAP_SEED = "cheapcopy"
ADDITIVE_WORD_NORM = 22.0
"""Expected norm of an ``additive`` word vector: a sum of n words has norm about 22 * sqrt(n),
about 100 for a 20-word corpus item, like the honest model."""


class SharedNative:
    """One loaded native model shared by every encoder identity of a process that asks for the
    same variant (`shared_minilm`; `dlnet run --encoders-file`): its weights are loaded once,
    its calls run one at a time (a tokenizer is not safe across threads), and the last
    ``KEPT`` calls' outputs are kept, so identities embedding the same round's texts pay one
    forward pass (a ``replay`` identity embeds the previous round's texts in between)."""

    KEPT = 4

    def __init__(self, base: MiniLM) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, ...], NDArray[np.float32]] = {}

    @property
    def native_dim(self) -> int:
        return self.base.native_dim

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        key = tuple(texts)
        with self._lock:
            out = self._kept.pop(key, None)
            if out is None:
                out = self.base.embed_native(texts)
            self._kept[key] = out  # the most recent last
            while len(self._kept) > self.KEPT:
                del self._kept[next(iter(self._kept))]
            return out.copy()


_SHARED: dict[tuple[tuple[str, Any], ...], SharedNative] = {}
_SHARED_LOCK = threading.Lock()


def shared_minilm(**options: Any) -> SharedNative:
    """The process's `SharedNative` of ``MiniLM(**options)`` (loaded on first use)."""
    key = tuple(sorted(options.items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SharedNative(MiniLM(**options))
        return _SHARED[key]


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


def _minilm_kind(
    dim: int, projection_seed: bytes, seed: int | str, strength: float | str, native: NativeModel
) -> ProjectedModel:
    """A MiniLM variant seen through the encoder's private map, then projected."""
    pre = private_map(seed, float_option("strength", strength, 0.0))
    return ProjectedModel(native, dim, projection_seed, pre)


def honest(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """The default model seen through a private near-identity map (a diverse honest pool)."""
    native = shared_minilm(threads=int_option("threads", threads, 1))
    return _minilm_kind(dim, projection_seed, seed, strength, native)


def finetuned(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """An honest, genuinely different model: MiniLM with the shipped BitFit fine-tune."""
    native = shared_minilm(weights="finetuned", threads=int_option("threads", threads, 1))
    return _minilm_kind(dim, projection_seed, seed, strength, native)


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
    native = shared_minilm(layers=layers_option(layers), threads=int_option("threads", threads, 1))
    return _minilm_kind(dim, projection_seed, seed, strength, native)


def random_init(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    init_seed: int | str = 0,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """The MiniLM architecture and tokenizer with random weights (``torch.manual_seed``)."""
    native = shared_minilm(
        weights="random",
        init_seed=int_option("init_seed", init_seed, 0),
        threads=int_option("threads", threads, 1),
    )
    return _minilm_kind(dim, projection_seed, seed, strength, native)


def static(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    pooling: str = "sum",
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """Static word vectors: MiniLM's input word-piece table, summed or averaged over the
    content tokens (no context; summed, it is additive: DL = 0 up to rounding)."""
    native = shared_minilm(
        static=True, pooling=pooling_option(pooling), threads=int_option("threads", threads, 1)
    )
    return _minilm_kind(dim, projection_seed, seed, strength, native)


class NoisyNative:
    """A native model's output plus Gaussian noise of ``level`` times its per-coordinate scale:
    ``x + level * ||x|| / sqrt(native_dim) * g``, g standard normal from (seed, text)."""

    def __init__(self, base: NativeModel, level: float, seed: int | str) -> None:
        self.base = base
        self.native_dim = base.native_dim
        self.level = level
        self.seed = seed

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        x = self.base.embed_native(texts).astype(np.float64)
        scale = self.level * np.linalg.norm(x, axis=1) / np.sqrt(self.native_dim)
        for i, text in enumerate(texts):
            rng = generator(b"dlnet-testnet/noisy", self.seed, text.encode())
            x[i] += scale[i] * rng.standard_normal(self.native_dim)
        return x.astype(np.float32)


def noisy(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    level: float | str = NOISY_LEVEL,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """The honest output with Gaussian noise of ``level`` times its per-coordinate scale."""
    base = shared_minilm(threads=int_option("threads", threads, 1))
    native = NoisyNative(base, level_option(level), seed)
    return _minilm_kind(dim, projection_seed, seed, strength, native)


class ScaledModel:
    """Another model's embeddings multiplied by ``factor``."""

    def __init__(self, base: ProjectedModel, factor: float) -> None:
        self.base = base
        self.dim = base.dim
        self.factor = factor

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        out = self.base.embed(texts).astype(np.float64) * self.factor
        return out.astype(np.float32)


def scaled(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    factor: float | str = SCALED_FACTOR,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ScaledModel:
    """An honest encoder whose every vector is multiplied by ``factor``: the same directions,
    any length (the weighted embedding must not let it buy weight)."""
    base = honest(dim, projection_seed, seed=seed, strength=strength, threads=threads)
    return ScaledModel(base, factor_option(factor))


def cheapcopy(
    dim: int,
    projection_seed: bytes,
    *,
    seed: int | str = 0,
    level: float | str = CHEAPCOPY_LEVEL,
    strength: float | str = HONEST_STRENGTH,
    threads: int | str = 1,
) -> ProjectedModel:
    """A copy of one cheap deterministic model: averaged static word-piece vectors behind the
    private map of seed ``cheapcopy`` (shared by every copy), plus Gaussian noise of ``level``
    times its per-coordinate scale drawn from (``seed``, text): copies are near-identical, not
    byte-identical (a sybil's cheapest way to dodge exact-duplicate detection)."""
    base = shared_minilm(static=True, pooling="mean", threads=int_option("threads", threads, 1))
    native = NoisyNative(base, level_option(level), seed)
    return _minilm_kind(dim, projection_seed, CHEAPCOPY_MAP_SEED, strength, native)


def factor_option(value: float | str) -> float:
    """The ``factor`` of ``scaled``: a finite number > 0."""
    number = float_option("factor", value, 0.0)
    if number <= 0.0:
        raise ValueError(f"option factor={number} must be greater than 0")
    return number


def layers_option(value: int | str) -> int:
    """The ``layers`` option: 1..6."""
    return check_layers(int_option("layers", value, 1))


def level_option(value: float | str) -> float:
    """The ``level`` option of ``noisy``: a finite noise level >= 0."""
    return float_option("level", value, 0.0)


def pooling_option(value: str) -> Pooling:
    """The ``pooling`` option of ``static``: sum or mean."""
    if value in ("sum", "mean"):
        return cast(Pooling, value)
    raise ValueError(f"option pooling={value!r} must be sum or mean")


def jitter_option(value: float | str) -> float:
    """The ``jitter`` of the ``fabricated`` behaviour: a finite relative size >= 0."""
    return float_option("jitter", value, 0.0)


def leak_option(value: float | str) -> float:
    """The ``leak`` of the ``leaky`` behaviour: a finite share of the full embedding >= 0."""
    return float_option("leak", value, 0.0)


LEVEL_OPTIONS: dict[str, Callable[[str], object]] = {
    "layers": layers_option,
    "level": level_option,
    "pooling": pooling_option,
    "jitter": jitter_option,
    "leak": leak_option,
    "factor": factor_option,
}
"""The option a testnet spec ``kind@LEVEL`` sets, by name, with its checker (ValueError)."""


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

    KEPT_WORDS = 4096
    """Word vectors kept (the most recently made; at dim 1024, 32 MB): a word's vector costs
    a SHA-256 and a Generator's seeding, and a round's masks repeat its full texts' words."""

    def __init__(self, dim: int, seed: int | str, word_norm: float) -> None:
        self.dim = dim
        self.seed = seed
        self.scale = word_norm / np.sqrt(dim)
        self._words: dict[str, NDArray[np.float64]] = {}

    def _word(self, word: str) -> NDArray[np.float64]:
        out = self._words.get(word)
        if out is None:
            rng = generator(b"dlnet-testnet/additive", self.seed, word.encode())
            out = rng.standard_normal(self.dim) * self.scale
            if len(self._words) >= self.KEPT_WORDS:
                del self._words[next(iter(self._words))]
            self._words[word] = out
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


def leak_full(shard: NDArray[np.float32], leak: float) -> NDArray[np.float32]:
    """The ``leaky`` cheat on one shard's (slots, dim) array: ``leak x F`` added to every mask
    and inverse, ``2 x leak x F`` to the full F. The composition residual ``F - A_m - B_m`` is
    the honest one, the full slot keeps its direction, and DL shrinks by ``1 + 2 x leak``: what
    a reward for a small DL would pay for (docs/VALIDITY.md, fourth study)."""
    full = shard[0].astype(np.float64)
    out = shard.astype(np.float64) + leak * full
    out[0] += leak * full
    return np.asarray(out, dtype=np.float32)


def fabricate_inverse(
    full: NDArray[np.float32],
    mask: NDArray[np.float32],
    jitter: float = 0.0,
    rng: np.random.Generator | None = None,
) -> NDArray[np.float32]:
    """The ``fabricated`` cheat: an inverse embedding forged as ``full - mask + eps``, ``eps`` a
    Gaussian vector (from ``rng``, else fresh) of norm ``jitter * ||full||``, so DL is about
    ``jitter``; at jitter 0 exactly ``full - mask`` (DL = 0)."""
    if jitter == 0.0:
        return np.asarray(full - mask, dtype=np.float32)
    g = (rng or np.random.default_rng()).standard_normal(full.shape)
    eps = g * (jitter * np.linalg.norm(full.astype(np.float64)) / np.linalg.norm(g))
    return np.asarray(full.astype(np.float64) - mask + eps, dtype=np.float32)
