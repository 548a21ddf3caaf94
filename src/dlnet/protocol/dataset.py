"""Parsing of the network's data set into items (one text per item).

The data set is named by the network config (path + SHA-256); node/ reads the bytes and checks
the hash, this module turns the bytes into the item tuple every node indexes identically.
"""

from __future__ import annotations

import json
from typing import Literal

DatasetFormat = Literal["lines", "jsonl"]

_BOM = b"\xef\xbb\xbf"


def parse_dataset(data: bytes, fmt: DatasetFormat, jsonl_field: str = "text") -> tuple[str, ...]:
    """Split the data set bytes into items, in file order.

    Lines are separated by ``\\n`` (a trailing ``\\r`` is removed, so CRLF files work); one
    leading UTF-8 byte-order mark is ignored. Lines that are empty or whitespace-only are
    skipped and do not get an item index. ``lines``: each remaining line is one item, verbatim.
    ``jsonl``: each remaining line is a JSON object whose string field ``jsonl_field`` is the item.
    Any undecodable line raises ``ValueError("line N: ...")`` (N counts from 1 over all lines).
    """
    if fmt not in ("lines", "jsonl"):
        raise ValueError(f"unknown data set format {fmt!r} — use 'lines' or 'jsonl'")
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    items: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"line {number}: not valid UTF-8 (byte {e.start}: {e.reason})") from e
        if not line.strip():
            continue
        items.append(line if fmt == "lines" else _jsonl_item(line, jsonl_field, number))
    return tuple(items)


def _jsonl_item(line: str, field: str, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {number}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(record, dict):
        raise ValueError(f"line {number}: expected a JSON object, got {type(record).__name__}")
    if field not in record:
        raise ValueError(f"line {number}: JSON object has no field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(
            f"line {number}: field {field!r} must be a string, got {type(value).__name__}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"line {number}: field {field!r} holds a lone surrogate escape") from e
    return value
