"""Canonical msgpack and hashing helpers shared by every protocol module.

The canonical encoding is msgpack as produced by msgpack-python with ``use_bin_type=True``:
shortest integer and length headers, ``bin`` for bytes, ``str`` for text, floats as float64,
arrays for sequences, and maps with their keys in ascending order of their UTF-8 bytes. A byte
string is canonical iff decoding and re-encoding it gives the same bytes; `unpack_strict`
enforces that, so no value has two accepted encodings.
"""

import hashlib
from typing import Any

import msgpack

from dlnet.protocol.errors import Reject, RejectReason

MAX_ROUND = 2**32 - 1
"""Largest round number any message, result or request may carry (at 1 s rounds, 136 years).
Well inside the store's signed 64-bit integers and the u64 of the reveal commitment."""
HASH_BYTES = 32
"""Bytes of every SHA-256 digest the protocol carries (ids, commitments, network id)."""
KEY_BYTES = 32
"""Bytes of an Ed25519 public key."""
MAX_DEPTH = 8
"""Deepest nesting of arrays and maps a decoded value may have (a message is at most 3 deep)."""

Packable = None | bool | int | float | str | bytes | list[Any] | tuple[Any, ...] | dict[str, Any]


def sha256(*parts: bytes) -> bytes:
    """SHA-256 of the concatenation of ``parts`` (callers make the parts unambiguous)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def u64be(x: int) -> bytes:
    """``x`` as 8 bytes big-endian; ``OverflowError`` outside [0, 2**64)."""
    return x.to_bytes(8, "big", signed=False)


def u16be(x: int) -> bytes:
    """``x`` as 2 bytes big-endian; ``OverflowError`` outside [0, 2**16)."""
    return x.to_bytes(2, "big", signed=False)


def _sorted_maps(obj: Any) -> Any:
    """``obj`` with every map's keys in canonical (UTF-8 byte) order; rejects other types."""
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, list | tuple):
        return [_sorted_maps(x) for x in obj]
    if isinstance(obj, dict):
        if not all(type(k) is str for k in obj):
            raise TypeError("canonical maps have str keys only")
        return {k: _sorted_maps(obj[k]) for k in sorted(obj, key=lambda k: k.encode())}
    raise TypeError(f"{type(obj).__name__} has no canonical msgpack encoding")


def pack(obj: Packable) -> bytes:
    """The canonical msgpack encoding of ``obj`` (see the module docstring)."""
    return bytes(msgpack.packb(_sorted_maps(obj), use_bin_type=True))


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def nesting_depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply arrays and maps nest in ``obj`` (a scalar is 0, ``[1]`` is 1), without
    recursion; the walk stops past ``limit``, so anything deeper gives ``limit + 1``."""
    depth = 0
    level = [obj] if isinstance(obj, list | tuple | dict) else []
    while level and depth <= limit:
        depth += 1
        nested: list[Any] = []
        for x in level:
            for y in x if isinstance(x, list | tuple) else [*x.keys(), *x.values()]:
                if isinstance(y, list | tuple | dict):
                    nested.append(y)
        level = nested
    return depth


def unpack_strict(data: bytes, max_len: int) -> Any:
    """Decode one canonical msgpack value that fills ``data`` exactly.

    Raises `Reject` with ``oversize`` if ``len(data) > max_len``, ``malformed`` if ``data`` is
    not exactly one msgpack value without extension types (or map keys other than str) or nests
    arrays and maps more than `MAX_DEPTH` deep, and
    ``non_canonical`` if re-encoding the value does not give ``data`` back.
    """
    if len(data) > max_len:
        raise Reject(RejectReason.OVERSIZE, f"{len(data)} bytes > {max_len}")
    try:
        obj = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext, timestamp=0
        )
        if nesting_depth(obj) > MAX_DEPTH:
            raise Reject(RejectReason.MALFORMED, f"nested deeper than {MAX_DEPTH}")
        again = pack(obj)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise Reject(RejectReason.MALFORMED, f"not one msgpack value: {exc}") from None
    if again != data:
        raise Reject(RejectReason.NON_CANONICAL, "re-encoding gives other bytes")
    return obj
