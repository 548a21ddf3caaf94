"""Request/response framing on a libp2p stream: ``u8 kind || u32be length || body``, one
request frame in, one response or error frame out (docs/PROTOCOL.md §6)."""

from __future__ import annotations

import struct

from libp2p.abc import INetStream

from dlnet.node.transport import RequestError

FRAME_REQUEST = 1
FRAME_RESPONSE = 2
FRAME_ERROR = 3
MAX_ERROR_BYTES = 1024
FRAME_HEADER = struct.Struct(">BI")


def encode_frame(kind: int, body: bytes) -> bytes:
    return FRAME_HEADER.pack(kind, len(body)) + body


async def _read_exact(stream: INetStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise RequestError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: INetStream, max_bytes: int) -> tuple[int, bytes]:
    """Read one frame; a length above ``max_bytes`` or an unknown kind is an error."""
    kind, length = FRAME_HEADER.unpack(await _read_exact(stream, FRAME_HEADER.size))
    if kind not in (FRAME_REQUEST, FRAME_RESPONSE, FRAME_ERROR):
        raise RequestError(f"unknown frame kind {kind}")
    if length > max_bytes:
        raise RequestError(f"frame of {length} bytes exceeds the bound of {max_bytes}")
    return kind, await _read_exact(stream, length)
