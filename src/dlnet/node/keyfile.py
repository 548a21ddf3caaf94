"""Key files: the dlnet signing key and a node's libp2p peer key, created with mode 0600
and refused when others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dlnet.protocol.identity import SigningKey, decode_key_file, encode_key_file


class KeyFileError(Exception):
    """A key file that cannot be used; the text is one line saying what to do."""


def write_key(path: Path, key: SigningKey, *, force: bool = False) -> None:
    """Write ``key`` to a new file readable by its owner only (never briefly wider)."""
    _write_private(path, encode_key_file(key), force=force)


def _write_private(path: Path, data: bytes, *, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists — pass --force to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _read_private(path: Path) -> bytes:
    """The bytes of an owner-only file; FileNotFoundError passes through."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: readable by others — run `chmod 600 {path}`")
    return data


def read_key(path: Path) -> SigningKey:
    try:
        data = _read_private(path)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key file — create one with `dlnet keygen --out {path}`"
        ) from None
    try:
        return decode_key_file(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a dlnet key file ({exc})") from exc


PEER_KEY_HEADER = b"dlnet-peer-key-v1 "
PEER_SEED_BYTES = 32


def peer_key_seed(path: Path) -> bytes:
    """The 32-byte seed of this node's libp2p key (its /p2p/ peer id), created at the first
    start. It is not the dlnet signing key; deleting the file gives a new peer id."""
    try:
        data = _read_private(path)
    except FileNotFoundError:
        seed = os.urandom(PEER_SEED_BYTES)
        _write_private(path, PEER_KEY_HEADER + seed.hex().encode() + b"\n", force=False)
        return seed
    try:
        if not data.startswith(PEER_KEY_HEADER):
            raise ValueError("no dlnet-peer-key-v1 header")
        seed = bytes.fromhex(data[len(PEER_KEY_HEADER) :].decode().strip())
        if len(seed) != PEER_SEED_BYTES:
            raise ValueError(f"{len(seed)} bytes, expected {PEER_SEED_BYTES}")
    except ValueError as exc:
        raise KeyFileError(
            f"{path}: not a dlnet peer key ({exc}) — delete it to get a new peer id"
        ) from None
    return seed
