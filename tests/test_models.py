"""Models: offline loading, the output contract, composition, the testnet kinds, the loader,
and the shipped corpus."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from dlnet.data import shipped_path
from dlnet.node.models import (
    DEFAULT_MODEL,
    Model,
    ModelLoadError,
    ProjectedModel,
    kinds,
    load_model,
)
from dlnet.node.models.kinds import SharedNative
from dlnet.node.models.minilm import FINETUNED_FILE
from dlnet.protocol.dataset import parse_dataset
from dlnet.protocol.masks import split_units
from dlnet.protocol.projection import projection_matrix

# Under pytest-xdist (--dist loadgroup) these tests run on one worker: MiniLM (torch and
# transformers, ~10 s) loads in one process only.
pytestmark = pytest.mark.xdist_group("minilm")

DIM = 1024
SEED = bytes(range(32))
TEXTS = [
    "the quick brown fox jumps over the lazy dog near the river bank",
    "a general concept formed by extracting common features from specific examples",
    "he was elected to a seat in the Senate",
    "short",
]


@dataclass(frozen=True)
class Network:
    dim: int = DIM
    projection_seed: bytes = SEED


def corpus_items() -> tuple[str, ...]:
    return parse_dataset(shipped_path("corpus.txt").read_bytes(), "lines", "text")


def masked_triples(count: int, seed: int = 3) -> list[str]:
    """full, mask, inverse texts of `count` corpus items, half the words hidden."""
    rng = random.Random(seed)
    texts = []
    for item in rng.sample(corpus_items(), count):
        units = split_units(item)
        hidden = set(rng.sample(range(len(units)), len(units) // 2))
        texts += [
            " ".join(units),
            " ".join(u for i, u in enumerate(units) if i not in hidden),
            " ".join(u for i, u in enumerate(units) if i in hidden),
        ]
    return texts


def mean_dl(vectors: NDArray[np.float32]) -> float:
    f, a, b = (vectors[i::3].astype(np.float64) for i in range(3))
    return float(np.mean(np.linalg.norm(f - a - b, axis=1) / np.linalg.norm(f, axis=1)))


def check_contract(model: Model, texts: list[str]) -> NDArray[np.float32]:
    out = model.embed(texts)
    assert isinstance(out, np.ndarray)
    assert out.shape == (len(texts), model.dim)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    return out


@dataclass
class Loaded:
    model: Any
    network_attempts: list[str]


@contextlib.contextmanager
def network_refused() -> Iterator[list[str]]:
    """Every socket connect and name lookup fails inside; yields the attempts made."""
    attempts: list[str] = []

    def refuse_connect(self: socket.socket, address: Any) -> None:
        attempts.append(f"connect {address}")
        raise OSError("network disabled in this test")

    def refuse_lookup(*args: Any, **kwargs: Any) -> Any:
        attempts.append(f"getaddrinfo {args[:2]}")
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse_connect)
        mp.setattr(socket.socket, "connect_ex", refuse_connect)
        mp.setattr(socket, "getaddrinfo", refuse_lookup)
        yield attempts


@pytest.fixture(scope="module")
def default_model() -> Iterator[Loaded]:
    """The default model, loaded once while every socket connect and name lookup fails."""
    with network_refused() as attempts:
        model = load_model(None, Network())
        model.embed(TEXTS)
    yield Loaded(model, attempts)


def test_default_model_loads_offline(default_model: Loaded) -> None:
    assert default_model.network_attempts == []
    assert isinstance(default_model.model, ProjectedModel)


def test_default_model_single_thread(default_model: Loaded) -> None:
    import torch

    assert torch.get_num_threads() == 1


def test_default_model_contract(default_model: Loaded) -> None:
    model = default_model.model
    assert model.dim == DIM
    out = check_contract(model, TEXTS)
    assert np.all(np.linalg.norm(out, axis=1) > 1.0)
    assert model.embed([]).shape == (0, DIM)


def test_default_model_is_projected_minilm(default_model: Loaded) -> None:
    model = default_model.model
    assert model.native.native_dim == 384
    assert np.array_equal(model.matrix, projection_matrix(SEED, 384, DIM))


def test_default_model_deterministic_and_batch_independent(default_model: Loaded) -> None:
    model = default_model.model
    batch = model.embed(TEXTS)
    alone = np.stack([model.embed([t])[0] for t in TEXTS])
    assert np.allclose(batch, alone, rtol=1e-4, atol=1e-3)
    assert np.array_equal(model.embed(TEXTS), batch)


def test_sum_pooling_skips_special_tokens(default_model: Loaded) -> None:
    """Only content tokens are summed: a text without any has the zero vector, and the sum of
    a longer text is larger than that of one word."""
    native = default_model.model.native
    out = native.embed_native(["", "word", "word " * 30])
    assert np.all(out[0] == 0.0)
    assert np.linalg.norm(out[2]) > 5 * np.linalg.norm(out[1])


def test_default_model_composes_better_than_noise(default_model: Loaded) -> None:
    texts = masked_triples(30)
    dl_model = mean_dl(check_contract(default_model.model, texts))
    dl_noise = mean_dl(kinds.noise(DIM, SEED, seed=1).embed(texts))
    assert dl_model < 0.7
    assert dl_noise > 1.4
    assert dl_model < 0.5 * dl_noise


def test_honest_kind_close_but_distinct(default_model: Loaded) -> None:
    texts = masked_triples(10)
    a = load_model("dlnet.node.models.kinds:honest", Network(), {"seed": "1"})
    check_contract(a, texts)
    assert isinstance(a, ProjectedModel)
    # Same weights as the default model, seen through other private maps: reuse them.
    b = ProjectedModel(a.native, DIM, SEED, kinds.private_map("2", kinds.HONEST_STRENGTH))
    c = ProjectedModel(a.native, DIM, SEED, kinds.private_map(1, kinds.HONEST_STRENGTH))
    base, va, vb, vc = (m.embed(texts) for m in (default_model.model, a, b, c))
    assert np.array_equal(va, vc)  # the seed "1" and 1 are the same seed
    for other in (va, vb):
        rel = np.linalg.norm(other - base, axis=1) / np.linalg.norm(base, axis=1)
        assert 0.05 < float(np.median(rel)) < 0.5
    rel_ab = np.linalg.norm(va - vb, axis=1) / np.linalg.norm(va, axis=1)
    assert 0.05 < float(np.median(rel_ab)) < 0.6
    # A linear map before a linear projection leaves the composition as it was.
    assert abs(mean_dl(va) - mean_dl(base)) < 0.1


def test_truncated_kind() -> None:
    model = load_model("dlnet.node.models.kinds:truncated", Network(), {"seed": "0", "layers": "4"})
    assert isinstance(model, ProjectedModel)
    assert isinstance(model.native, SharedNative)
    assert model.native.base.layers == 4
    texts = masked_triples(10)
    assert mean_dl(check_contract(model, texts)) < 0.7


def cosines(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots: NDArray[np.float64] = np.sum(a64 * b64, axis=1)
    return dots / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def test_finetuned_kind_ships_its_biases_and_loads_offline(default_model: Loaded) -> None:
    from safetensors.torch import load_file

    assert FINETUNED_FILE.is_file() and FINETUNED_FILE.stat().st_size < 200_000
    shipped = load_file(str(FINETUNED_FILE))
    assert len(shipped) == 49 and all(name.endswith(".bias") for name in shipped)
    with network_refused() as attempts:
        model = load_model("dlnet.node.models.kinds:finetuned", Network(), {"seed": "0"})
    assert attempts == []
    assert isinstance(model, ProjectedModel) and isinstance(model.native, SharedNative)
    check_contract(model, TEXTS)
    import torch

    tuned = model.native.base.model.state_dict()
    base = default_model.model.native.model.state_dict()
    for name, value in base.items():  # the shipped biases replace the pretrained ones, only
        assert torch.equal(tuned[name], shipped.get(name, value)), name
    assert sum(not torch.equal(base[name], shipped[name]) for name in shipped) >= 40
    # A different model, still close to the one it was tuned from.
    cos = cosines(model.native.embed_native(TEXTS), default_model.model.native.embed_native(TEXTS))
    assert float(np.min(cos)) > 0.5 and float(np.max(cos)) < 0.9999


def test_random_init_kind_is_seeded_and_offline(default_model: Loaded) -> None:
    import torch

    state = torch.random.get_rng_state()
    with network_refused() as attempts:
        a = load_model("dlnet.node.models.kinds:random_init", Network(), {"init_seed": "3"})
    assert attempts == []
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    out = check_contract(a, TEXTS)
    assert np.array_equal(out, kinds.random_init(DIM, SEED, init_seed=3).embed(TEXTS))
    assert not np.allclose(out, kinds.random_init(DIM, SEED, init_seed=4).embed(TEXTS))
    assert isinstance(a, ProjectedModel) and isinstance(a.native, SharedNative)
    layer = "encoder.layer.0.attention.self.query.weight"
    random_w = a.native.base.model.state_dict()[layer].numpy()
    assert not np.allclose(random_w, default_model.model.native.model.state_dict()[layer].numpy())


def test_static_kind_summed_is_additive_averaged_is_not() -> None:
    texts = masked_triples(20)
    summed = check_contract(kinds.static(DIM, SEED), texts)
    mean = load_model("dlnet.node.models.kinds:static", Network(), {"pooling": "mean"})
    averaged = check_contract(mean, texts)
    assert mean_dl(summed) < 1e-4  # word pieces of the full text = those of mask + inverse
    assert mean_dl(averaged) > 0.2
    # No context: a word embeds alike wherever it stands.
    words = kinds.static(DIM, SEED).embed(["river bank", "bank river", "bank"])
    assert np.allclose(words[0], words[1], rtol=1e-5, atol=1e-4)


def test_noisy_kind_adds_noise_of_its_level(default_model: Loaded) -> None:
    # The base's last output is kept (as identities sharing a model do): one forward pass of
    # the texts for the three noisy views of them below.
    native = SharedNative(default_model.model.native)
    texts = masked_triples(10)
    base = native.embed_native(texts)
    assert np.array_equal(kinds.NoisyNative(native, 0.0, 1).embed_native(texts), base)
    noisy = kinds.NoisyNative(native, 0.5, 1)
    out = noisy.embed_native(texts)
    rel = np.linalg.norm(out - base, axis=1) / np.linalg.norm(base, axis=1)
    assert 0.4 < float(np.median(rel)) < 0.6
    assert not np.array_equal(kinds.NoisyNative(native, 0.5, 2).embed_native(texts), out)
    assert np.allclose(noisy.embed_native(texts[3:5]), out[3:5], rtol=1e-4, atol=1e-3)  # per text
    model = load_model("dlnet.node.models.kinds:noisy", Network(), {"level": "0.5"})
    check_contract(model, TEXTS)


def test_noise_kind() -> None:
    model = kinds.noise(DIM, SEED, seed="7")
    out = check_contract(model, TEXTS)
    assert np.array_equal(out[1], model.embed([TEXTS[1]])[0])
    assert not np.array_equal(out, kinds.noise(DIM, SEED, seed="8").embed(TEXTS))
    assert abs(float(np.mean(np.linalg.norm(out, axis=1))) / kinds.NOISE_NORM - 1) < 0.1


def test_zero_kind() -> None:
    out = check_contract(kinds.zero(DIM, SEED), TEXTS)
    assert not np.any(out)


def test_additive_kind_has_zero_dl() -> None:
    model = kinds.additive(DIM, SEED, seed=3)
    texts = masked_triples(40)
    out = check_contract(model, texts)
    assert mean_dl(out) < 1e-6
    assert np.all(np.linalg.norm(out, axis=1) > 1.0)
    assert np.array_equal(out, kinds.additive(DIM, SEED, seed=3).embed(texts))
    # Word vectors are kept, at most KEPT_WORDS of them: a model that evicts at every other
    # word embeds the same bits as one that keeps them all (and as a fresh one, above).
    small = kinds.additive(DIM, SEED, seed=3)
    small.KEPT_WORDS = 2
    assert np.array_equal(out, small.embed(texts)) and len(small._words) == 2
    assert np.array_equal(out, model.embed(texts))


def test_fabricate_inverse_has_zero_dl() -> None:
    rng = np.random.default_rng(0)
    full, mask = rng.standard_normal((2, DIM)).astype(np.float32)
    inverse = kinds.fabricate_inverse(full, mask)
    assert inverse.dtype == np.float32
    assert np.array_equal(inverse, full - mask)
    assert np.array_equal(kinds.fabricate_inverse(full, mask, 0.0, rng), full - mask)


@pytest.mark.parametrize("jitter", [0.05, 0.2, 1.0])
def test_fabricate_inverse_jitter_sets_the_dl(jitter: float) -> None:
    rng = np.random.default_rng(1)
    full, mask = (rng.standard_normal((2, DIM)) * 50).astype(np.float32)
    inverse = kinds.fabricate_inverse(full, mask, jitter, rng)
    assert inverse.dtype == np.float32
    dl = np.linalg.norm(full.astype(np.float64) - mask - inverse) / np.linalg.norm(full)
    assert dl == pytest.approx(jitter, rel=1e-4)
    assert not np.array_equal(inverse, kinds.fabricate_inverse(full, mask, jitter))  # fresh eps


def wrong_dim_factory(dim: int, projection_seed: bytes) -> kinds.ZeroModel:
    return kinds.ZeroModel(dim + 1)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("no_colon_here", {}, "expected module:factory"),
        ("dlnet.node.models.nonexistent:x", {}, "cannot import"),
        ("dlnet.node.models.kinds:nope", {}, "no callable"),
        ("dlnet.node.models.kinds:zero", {"colour": "red"}, "colour"),
        ("dlnet.node.models.kinds:noise", {"norm": "big"}, "not a number"),
        ("dlnet.node.models.kinds:honest", {"strength": "nan"}, "must be finite"),
        ("dlnet.node.models.kinds:truncated", {"layers": "0"}, "at least 1"),
        ("dlnet.node.models.kinds:truncated", {"layers": "7"}, "1..6"),
        ("dlnet.node.models.kinds:noisy", {"level": "-1"}, "at least 0"),
        ("dlnet.node.models.kinds:static", {"pooling": "max"}, "sum or mean"),
        ("dlnet.node.models.kinds:random_init", {"init_seed": "x"}, "not an integer"),
        ("test_models:wrong_dim_factory", {}, "the model's dim is 1025"),
    ],
)
def test_load_model_errors(spec: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec, Network(), options)


@pytest.mark.parametrize("kind", ["noise", "zero", "additive"])
def test_loader_builds_cheap_kinds(kind: str) -> None:
    model = load_model(f"dlnet.node.models.kinds:{kind}", Network(dim=64), {"seed": "5"})
    check_contract(model, TEXTS)
    assert model.dim == 64


def test_default_spec_names_the_minilm_factory() -> None:
    assert DEFAULT_MODEL == "dlnet.node.models.minilm:default"


def test_shipped_corpus() -> None:
    path = shipped_path("corpus.txt")
    assert path.stat().st_size < 1_000_000
    items = corpus_items()
    assert len(items) >= 1000
    assert all(len(split_units(item)) >= 4 for item in items)
    assert len(set(items)) == len(items)
    assert shipped_path("CORPUS.md").is_file()


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../pyproject.toml", "a/../../b", "a\\b"])
def test_shipped_path_stays_inside_package(name: str) -> None:
    with pytest.raises(ValueError, match=r"inside the dlnet\.data package"):
        shipped_path(name)


def test_shipped_labelled_files() -> None:
    for name in (
        "pang_lee_polarity.tsv",
        "wordnet_lexnames.tsv",
        "chatterbot_topics.tsv",
        "rotten_tomatoes.tsv",
    ):
        rows = shipped_path(f"labelled/{name}").read_text(encoding="utf-8").splitlines()
        assert len(rows) >= 200
        assert all(len(row.split("\t")) == 2 for row in rows)
    sims = shipped_path("labelled/lee_similarities.tsv").read_text().splitlines()
    docs = shipped_path("labelled/lee_documents.txt").read_text(encoding="utf-8").splitlines()
    assert len(sims) == len(docs) == 50


def test_shared_native_pays_one_forward_pass_per_recent_text_list() -> None:
    """Identities sharing a native model reuse a recent call's output (a ``replay`` identity
    embeds the previous round's texts between two rounds' calls), and each gets its own copy."""

    class Counting:
        native_dim = 3

        def __init__(self) -> None:
            self.calls: list[tuple[str, ...]] = []

        def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
            self.calls.append(tuple(texts))
            return np.array([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)

    base = Counting()
    shared = SharedNative(base)  # type: ignore[arg-type]
    this, last = ["a b", "c"], ["d e f"]
    first = shared.embed_native(this)
    assert np.array_equal(shared.embed_native(last), [[5, 1, 2]])
    again = shared.embed_native(this)
    assert np.array_equal(first, again) and first is not again
    assert base.calls == [tuple(this), tuple(last)]
    others = [[f"t{i}"] for i in range(SharedNative.KEPT)]
    for texts in others:
        shared.embed_native(texts)
    shared.embed_native(this)  # pushed out by KEPT newer lists: computed again
    assert base.calls[-1] == tuple(this) and len(base.calls) == 3 + SharedNative.KEPT
