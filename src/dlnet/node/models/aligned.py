"""Alignment: a linear map from a model's own space into the network's space.

A model that was not trained in the network's space (another architecture, another width) lies
elsewhere: its directions have a cosine near 0 to the network's consensus, and validators cut
it. ``dlnet align`` fits a map ``W`` (in_dim x dim) so that ``native(text) @ W`` is close to
the network's *certified* weighted embedding of the same text (``node/align.py`` gathers those
pairs from verified certificates); ``dlnet run --align MAP`` then embeds with it
(``AlignedModel``).

The map is linear and has no intercept, so the composition identity the validators check,
``E(full) - E(mask) - E(inverse)``, goes through it unchanged in form (an intercept ``b`` would
add ``-b`` to every residual). Two fits are tried, both closed-form and deterministic (numpy
LAPACK on one platform gives the same bits for the same inputs):

- ``ridge``: ``W = (X'X + lam I)^-1 X'Y``, ``lam = alpha * trace(X'X) / in_dim``, alpha chosen
  from ``RIDGE_ALPHAS`` on the last fifth of the training pairs;
- ``procrustes``: ``W = s * U V'`` from the thin SVD ``X'Y = U S V'``, ``s = sum(S) / ||X||^2``:
  a rotation (semi-orthogonal) times one scale, which keeps the model's own geometry — its
  neighbours, hence its quality — and only moves it.

Both are fitted on the earlier pairs (by round, then shard) and measured on the last
``HELD_OUT`` fraction (later rounds: the future the map will meet); ``auto`` keeps the one with
the higher held-out mean cosine and refits it on every pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import Model, ModelLoadError, ProjectedModel

Method = Literal["ridge", "procrustes"]
METHODS: tuple[Method, ...] = ("ridge", "procrustes")
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HELD_OUT = 0.2
MIN_PAIRS = 10
MAP_VERSION = 1


class AlignError(ModelLoadError):
    """An alignment cannot be fitted or a map file cannot be used; one line saying how to fix."""


@dataclass(frozen=True)
class AlignMap:
    """A fitted map and what it was fitted on (``map.npz``)."""

    matrix: NDArray[np.float32]
    """(in_dim, dim) float32: ``aligned = input @ matrix``."""
    method: Method
    network_id: bytes
    heldout_cos: dict[str, float] = field(default_factory=dict)
    """Per method tried: mean cosine to the certified embedding on the held-out pairs."""
    pairs: int = 0
    rounds: tuple[int, ...] = ()
    model: str = ""

    @property
    def in_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def _mean_cos(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    if not np.any(ok):
        return 0.0
    cos = np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])
    return float(np.mean(cos))


def fit_ridge(x: NDArray[np.float64], y: NDArray[np.float64], alpha: float) -> NDArray[np.float64]:
    """``(X'X + lam I)^-1 X'Y`` with ``lam = alpha * trace(X'X) / in_dim``."""
    gram = x.T @ x
    lam = alpha * float(np.trace(gram)) / gram.shape[0]
    out: NDArray[np.float64] = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x.T @ y)
    return out


def fit_procrustes(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scaled orthogonal Procrustes: ``s * U V'`` with ``X'Y = U S V'`` (thin SVD)."""
    u, s, vt = np.linalg.svd(x.T @ y, full_matrices=False)
    scale = float(np.sum(s)) / max(float(np.sum(x * x)), 1e-300)
    out: NDArray[np.float64] = scale * (u @ vt)
    return out


def _split(n: int) -> int:
    """Index of the first held-out pair: the last HELD_OUT fraction (at least one pair)."""
    return max(1, min(n - 1, n - round(n * HELD_OUT)))


def fit_method(
    method: Method, x: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The map of ``method`` fitted on all of (x, y); ridge picks its alpha on the last
    HELD_OUT fraction of the pairs given."""
    if method == "procrustes":
        return fit_procrustes(x, y)
    cut = _split(len(x))
    best = max(
        RIDGE_ALPHAS,
        key=lambda a: _mean_cos(x[cut:] @ fit_ridge(x[:cut], y[:cut], a), y[cut:]),
    )
    return fit_ridge(x, y, best)


def fit_map(
    x: NDArray[np.floating[Any]],
    y: NDArray[np.floating[Any]],
    method: Method | Literal["auto"] = "auto",
) -> tuple[Method, NDArray[np.float32], dict[str, float]]:
    """Fit on the pairs ``(x[i], y[i])`` in order (earlier rounds first).

    Returns the method kept, its map refitted on every pair (float32), and per method tried
    the held-out mean cosine (fitted on the first pairs, measured on the last HELD_OUT
    fraction). ``auto`` tries both and keeps the higher; ties go to ridge."""
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x64.ndim != 2 or y64.ndim != 2 or len(x64) != len(y64):
        raise AlignError(f"alignment: {x64.shape} inputs for {y64.shape} targets")
    if len(x64) < MIN_PAIRS:
        raise AlignError(
            f"alignment: {len(x64)} certified embeddings, at least {MIN_PAIRS} are needed — "
            "wait for more finalized rounds"
        )
    cut = _split(len(x64))
    tried = METHODS if method == "auto" else (method,)
    held: dict[str, float] = {}
    for m in tried:
        w = fit_method(m, x64[:cut], y64[:cut])
        held[m] = _mean_cos(x64[cut:] @ w, y64[cut:])
    best: Method = max(tried, key=lambda m: held[m])
    return best, fit_method(best, x64, y64).astype(np.float32), held


def save_map(path: Path, m: AlignMap) -> None:
    meta = {
        "version": MAP_VERSION,
        "method": m.method,
        "network_id": m.network_id.hex(),
        "heldout_cos": m.heldout_cos,
        "pairs": m.pairs,
        "rounds": list(m.rounds),
        "model": m.model,
    }
    with path.open("wb") as f:
        np.savez(f, matrix=m.matrix, meta=np.array(json.dumps(meta, sort_keys=True)))


def load_map(path: Path, network_id: bytes, dim: int) -> AlignMap:
    """Read a map written by ``save_map`` for this network; AlignError (one line) if it cannot
    be used."""
    where = f"--align {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            matrix = np.array(z["matrix"])
            meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
        raise AlignError(f"{where}: no such file — run `dlnet align ... --out {path}`") from None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise AlignError(
            f"{where}: not a map written by `dlnet align` ({type(exc).__name__}) — fit it again"
        ) from None
    if (
        not isinstance(meta, dict)
        or meta.get("version") != MAP_VERSION
        or meta.get("method") not in METHODS
        or matrix.dtype != np.float32
        or matrix.ndim != 2
        or not np.all(np.isfinite(matrix))
    ):
        raise AlignError(f"{where}: not a usable version-{MAP_VERSION} map — fit it again")
    if meta.get("network_id") != network_id.hex():
        raise AlignError(
            f"{where}: fitted for network {str(meta.get('network_id'))[:16]}..., this is "
            f"{network_id.hex()[:16]}... — fit it against this network's certificates"
        )
    if matrix.shape[1] != dim:
        raise AlignError(f"{where}: maps into {matrix.shape[1]} dims, the network has {dim}")
    return AlignMap(
        matrix=matrix,
        method=meta["method"],
        network_id=network_id,
        heldout_cos={str(k): float(v) for k, v in dict(meta.get("heldout_cos", {})).items()},
        pairs=int(meta.get("pairs", 0)),
        rounds=tuple(int(r) for r in meta.get("rounds", [])),
        model=str(meta.get("model", "")),
    )


def alignment_input(model: Model) -> tuple[int, Callable[[list[str]], NDArray[np.float32]]]:
    """What a map is fitted from and applied to: the native space of a ``ProjectedModel``
    (the projection is bypassed), else the model's own output."""
    if isinstance(model, ProjectedModel):
        return model.native.native_dim, model.native.embed_native
    return model.dim, model.embed


class AlignedModel:
    """``embed(x) = input(x) @ matrix`` (``alignment_input``), float32."""

    def __init__(self, model: Model, m: AlignMap) -> None:
        in_dim, self._input = alignment_input(model)
        if in_dim != m.in_dim:
            raise AlignError(
                f"--align: the map takes {m.in_dim}-dim inputs, the model gives {in_dim} — "
                "fit the map with this model (`dlnet align --model ...`)"
            )
        self.dim = m.dim
        self.matrix = m.matrix

    def embed(self, texts: list[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = np.asarray(self._input(texts), dtype=np.float32)
        return np.asarray(x @ self.matrix, dtype=np.float32)
