"""Encoder models: what a model is, the network projection around it, and the loader.

A model is any object with ``dim`` and ``embed(texts) -> (len(texts), dim) float32``. It is
named on the command line as ``module:factory``; the node calls
``factory(dim, projection_seed, **options)`` with the network config's ``dim`` and
``projection_seed`` and the operator's ``--model-option KEY=VALUE`` pairs (values are strings).
The default model is ``dlnet.node.models.minilm:default``; the testnet kinds live in
``dlnet.node.models.kinds``.

Most models have a native space of their own size (384 for all-MiniLM-L6-v2): wrap them in
``ProjectedModel``, which applies the network's fixed projection so every encoder of a network
speaks in the same coordinates.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from dlnet.protocol.projection import projection_matrix

DEFAULT_MODEL = "dlnet.node.models.minilm:default"


class Model(Protocol):
    """What the encoder role needs from a model."""

    @property
    def dim(self) -> int:
        """Width of the vectors ``embed`` returns (the network's dimension)."""
        ...

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        """One row per text, in order: a (len(texts), dim) float32 array of finite values."""
        ...


class NativeModel(Protocol):
    """A model in its own space, before the network projection."""

    @property
    def native_dim(self) -> int: ...

    def embed_native(self, texts: list[str]) -> NDArray[np.float32]:
        """A (len(texts), native_dim) float32 array."""
        ...


class NetworkShape(Protocol):
    """The two fields of the network config a model depends on (``NetworkConfig`` has them)."""

    @property
    def dim(self) -> int: ...

    @property
    def projection_seed(self) -> bytes: ...


class ModelLoadError(Exception):
    """A model cannot be loaded; the text is one line telling the operator what to fix."""


class ProjectedModel:
    """``embed(x) = native(x) @ pre @ P``: an optional private linear map ``pre`` (native_dim
    square; testnet diversity only), then the network projection ``P`` (see
    ``protocol/projection.py``). Both are folded into one matrix at construction."""

    def __init__(
        self,
        native: NativeModel,
        dim: int,
        projection_seed: bytes,
        pre: NDArray[np.float32] | None = None,
    ) -> None:
        self.native = native
        self.dim = dim
        matrix = projection_matrix(projection_seed, native.native_dim, dim)
        if pre is not None:
            matrix = (pre.astype(np.float64) @ matrix.astype(np.float64)).astype(np.float32)
        self.matrix = matrix

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.native.embed_native(texts) @ self.matrix, dtype=np.float32)


def int_option(name: str, value: int | str, minimum: int) -> int:
    """A factory option given as an int or as its decimal text (from ``--model-option``)."""
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"option {name}={value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"option {name}={number} must be at least {minimum}")
    return number


def float_option(name: str, value: float | str, minimum: float) -> float:
    """A factory option given as a number or as its text; must be finite and >= minimum."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"option {name}={value!r} is not a number") from None
    if not minimum <= number < float("inf"):
        raise ValueError(f"option {name}={number} must be finite and at least {minimum}")
    return number


def load_model(
    spec: str | None, network: NetworkShape, options: Mapping[str, str] | None = None
) -> Model:
    """Import ``module:factory`` (the default model if ``spec`` is None), call it with the
    network's dim and projection seed and the options, and check the model's ``dim``."""
    spec = spec or DEFAULT_MODEL
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"--model {spec!r}: expected module:factory, e.g. {DEFAULT_MODEL}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"--model {spec}: cannot import {module_name} ({exc}) — install it or fix the name"
        ) from exc
    except Exception as exc:  # a module that fails while importing: its own bug, one line
        raise ModelLoadError(
            f"--model {spec}: importing {module_name} failed ({one_line(exc)}) — fix the module"
        ) from exc
    factory: Callable[..., Model] | None = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"--model {spec}: {module_name} has no callable {attr!r}")
    try:
        model = factory(network.dim, network.projection_seed, **dict(options or {}))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"--model {spec}: {exc} — check the --model-option values") from exc
    except MemoryError as exc:
        raise ModelLoadError(
            f"--model {spec}: out of memory while loading the model — free memory or use a "
            "smaller model"
        ) from exc
    except Exception as exc:  # weights missing, corrupt files, no network for a download...
        raise ModelLoadError(
            f"--model {spec}: the factory failed ({one_line(exc)}) — check that the model's "
            "files are installed and readable"
        ) from exc
    dim = getattr(model, "dim", None)
    if not callable(getattr(model, "embed", None)) or not isinstance(dim, int):
        raise ModelLoadError(
            f"--model {spec}: the factory returned {type(model).__name__}, which lacks an int "
            "'dim' or an 'embed' method — see dlnet.node.models.Model"
        )
    if dim != network.dim:
        raise ModelLoadError(
            f"--model {spec}: the model's dim is {dim}, the network's is {network.dim} — "
            "a factory must return vectors of the dim it is given"
        )
    return model


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
