"""`dlnet align`: gather the network's certified weighted embeddings and fit a model's map.

The pairs are public: for every certified round a node serves (its HTTP API) or holds (its data
dir), each shard's full text — derived from the network config and its data set exactly as the
encoders derived it (`masks.round_tasks`) — and the shard's weighted embedding from the round's
certificate. A certificate counts only if it decodes strictly and verifies against the network
config (`report.checked_certificate`, the check every report of a node makes); a shard whose
weighted embedding is the zero vector (nothing certified there) is left out. The fit itself is
`models.aligned.fit_map`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from dlnet.node.models import Model
from dlnet.node.models.aligned import AlignError, AlignMap, Method, alignment_input, fit_map
from dlnet.node.report import STORE_FILE, checked_certificate, verified_certificate
from dlnet.node.store import MAX_ROUND, Store
from dlnet.protocol.config import NetworkConfig
from dlnet.protocol.masks import round_tasks
from dlnet.protocol.result import text_digest
from dlnet.protocol.wire import Certificate

API_PAGE = 1000
"""Rounds per `/v1/rounds` request (the API's MAX_ROUNDS_LISTED)."""
HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Certified:
    """The (text, certified embedding) pairs, by round then shard."""

    texts: list[str]
    targets: NDArray[np.float32]
    rounds: tuple[int, ...]
    refused: int
    """Certificates offered that did not verify against the network config."""


def _http(url: str, *, missing: bool = False) -> bytes | None:
    """The body of a GET; None for a 404 if ``missing`` (a node that holds no valid
    certificate for a round answers so); any other failure is one AlignError line."""
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        if missing and exc.code == 404:
            return None
        raise AlignError(f"--from: {url} answered {exc.code} — is it a dlnet node's API?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlignError(
            f"--from: cannot reach {url} ({reason}) — check the node's --api URL"
        ) from None


def _json(url: str) -> Any:
    try:
        return json.loads(_http(url) or b"")
    except ValueError:
        raise AlignError(f"--from: {url} did not answer JSON — is it a dlnet node's API?") from None


def _api_certificates(base: str) -> Iterator[tuple[int, bytes | None]]:
    """Every finalized round the node at ``base`` lists, with its certificate bytes (None if
    the node then answers 404 for it)."""
    base = base.rstrip("/")
    try:
        top = int(_json(f"{base}/v1/rounds")["to"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AlignError(f"--from: {base}/v1/rounds is not a dlnet round list ({exc})") from None
    for lo in range(0, top + 1, API_PAGE):
        hi = min(top, lo + API_PAGE - 1)
        page = _json(f"{base}/v1/rounds?from={lo}&to={hi}")
        for row in page.get("rounds", []) if isinstance(page, dict) else []:
            rnd = row.get("round") if isinstance(row, dict) else None
            if row.get("finalized") is True and isinstance(rnd, int):
                yield rnd, _http(f"{base}/v1/rounds/{rnd}/certificate", missing=True)


def certificates(cfg: NetworkConfig, source: str) -> tuple[list[Certificate], int]:
    """The verified certificates of ``source`` (an API URL or a node's data dir), by round,
    and how many were offered but did not verify."""
    out: list[Certificate] = []
    refused = 0
    if source.startswith(("http://", "https://")):
        for rnd, data in _api_certificates(source):
            cert = None if data is None else checked_certificate(cfg, data)
            if cert is None or cert.round != rnd:
                refused += 1
            else:
                out.append(cert)
        return out, refused
    path = Path(source) / STORE_FILE
    if not path.exists():
        raise AlignError(
            f"--from {source}: neither an http(s):// API URL nor a node data dir (no {path})"
        )
    store = Store.open(path)
    try:
        for rnd in store.certificate_rounds(0, MAX_ROUND):
            cert = verified_certificate(store, cfg, rnd)
            if cert is None:
                refused += 1
            else:
                out.append(cert)
    finally:
        store.close()
    return out, refused


def certified_pairs(
    cfg: NetworkConfig, items: Sequence[str], certs: Sequence[Certificate], refused: int = 0
) -> Certified:
    """Each certified shard's full text and weighted embedding (zero vectors left out).

    A shard counts only if the result names the digest of the corpus text derived here: a
    shard that carried submitted texts names another (docs/PROTOCOL.md §4), and is left out."""
    texts: list[str] = []
    targets: list[NDArray[np.float32]] = []
    rounds: list[int] = []
    for cert in sorted(certs, key=lambda c: c.round):
        tasks = round_tasks(cfg, items, cert.round)
        named = cert.result.texts
        for task, raw, digest in zip(tasks, cert.result.weighted, named, strict=False):
            vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if vec.shape != (cfg.dim,) or not np.any(vec) or not np.all(np.isfinite(vec)):
                continue
            if digest != text_digest(task.texts[0]):
                continue
            texts.append(task.texts[0])
            targets.append(vec)
        rounds.append(cert.round)
    stacked = np.stack(targets) if targets else np.zeros((0, cfg.dim), np.float32)
    return Certified(texts, stacked, tuple(rounds), refused)


def fit_alignment(
    cfg: NetworkConfig,
    model: Model,
    pairs: Certified,
    method: Method | Literal["auto"] = "auto",
    spec: str = "",
) -> AlignMap:
    """Embed the certified texts with the model's ``alignment_input`` and fit the map."""
    if not pairs.texts:
        raise AlignError(
            "--from: no certified weighted embedding found — the node holds no finalized round "
            "of this network yet"
        )
    _, embed = alignment_input(model)
    x = np.asarray(embed(pairs.texts), dtype=np.float64)
    kept, matrix, held = fit_map(x, pairs.targets, method)
    return AlignMap(
        matrix=matrix,
        method=kept,
        network_id=cfg.network_id,
        heldout_cos=held,
        pairs=len(pairs.texts),
        rounds=pairs.rounds,
        model=spec,
    )


def describe(m: AlignMap, refused: int, seconds: float) -> str:
    tried = ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.heldout_cos.items()))
    span = f"rounds {m.rounds[0]}..{m.rounds[-1]}" if m.rounds else "no rounds"
    return (
        f"aligned {m.in_dim} -> {m.dim} dims on {m.pairs} certified embeddings "
        f"({len(m.rounds)} {span}; {refused} certificates refused); held-out cosine: {tried}; "
        f"kept {m.method}; {seconds:.1f} s"
    )
