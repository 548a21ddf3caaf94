"""Signing-key files: created with mode 0600, refused when others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dlnet.protocol.identity import SigningKey, decode_key_file, encode_key_file


class KeyFileError(Exception):
    """A key file that cannot be used; the text is one line saying what to do."""


def write_key(path: Path, key: SigningKey, *, force: bool = False) -> None:
    """Write ``key`` to a new file readable by its owner only (never briefly wider)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path}: exists — pass --force to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(encode_key_file(key))


def read_key(path: Path) -> SigningKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key file — create one with `dlnet keygen --out {path}`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: readable by others — run `chmod 600 {path}`")
    try:
        return decode_key_file(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a dlnet key file ({exc})") from exc
