"""Locating and loading the network's data set (the file named by the network config)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dlnet.data import shipped_path
from dlnet.protocol.config import DatasetRef
from dlnet.protocol.dataset import parse_dataset

BUILTIN_PREFIX = "builtin:"


class DatasetError(Exception):
    """The data set named by the network config cannot be used; the text says how to fix it."""


def resolve_dataset_path(ref: DatasetRef, config_dir: Path) -> Path:
    """`builtin:NAME` is a file shipped in the dlnet.data package; a relative path is relative
    to the folder holding the network config (so a config and its data travel together)."""
    if ref.path.startswith(BUILTIN_PREFIX):
        try:
            return shipped_path(ref.path[len(BUILTIN_PREFIX) :])
        except ValueError as exc:
            raise DatasetError(
                f"dataset.path: {exc} — name a file such as builtin:corpus.txt"
            ) from exc
    path = Path(ref.path)
    return path if path.is_absolute() else config_dir / path


def load_items(ref: DatasetRef, config_dir: Path) -> tuple[str, ...]:
    """Read the data set, check its SHA-256 against the config, and split it into items."""
    path = resolve_dataset_path(ref, config_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"dataset.path: cannot read {path} ({exc.strerror}) — "
            "point dataset.path at the data set file"
        ) from exc
    digest = hashlib.sha256(data).digest()
    if digest != ref.sha256:
        raise DatasetError(
            f"dataset.sha256: {path} hashes to {digest.hex()}, the config says "
            f"{ref.sha256.hex()} — use the network's data set, or fix dataset.sha256"
        )
    try:
        return parse_dataset(data, ref.format, ref.jsonl_field)
    except ValueError as exc:
        raise DatasetError(f"dataset: {path}: {exc}") from exc
