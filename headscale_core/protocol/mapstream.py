"""Framing of the ``/machine/map`` response body (sans-IO).

Each MapResponse on a map stream is ``uint32 little-endian length || body``, where the body is
one zstd frame of the JSON when the request said ``Compress: "zstd"`` (every current client
does) and the raw JSON otherwise. The mapper serialises a message once, ``MapMessageEncoder``
frames it once, and the resulting bytes are shared by every recipient; only the Noise
encryption below is per connection. ``MapStreamDecoder`` is the client side.
"""

from __future__ import annotations

import struct
from typing import NoReturn

import zstandard

from headscale_core.protocol.errors import LocalProtocolError, RemoteProtocolError

# testcontrol refuses larger messages; a client would give up on them anyway.
MAX_MESSAGE_SIZE = 256 << 20
# Level 1 (Headscale's "fastest" too): on map JSON it is twice as fast as the library default 3
# and, on a 1,000-peer full map, even smaller (157 KB against 178 KB).
DEFAULT_LEVEL = 1

_LENGTH = struct.Struct("<I")


class MapMessageEncoder:
    """Frames JSON map messages; keep one per worker and reuse it (compressor set-up is costly).

    Not safe for use from several threads at once; one asyncio loop is fine.
    """

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level)

    def encode(self, json_body: bytes, *, compress: bool = True) -> bytes:
        """Return ``LE32(len) || zstd(json_body)`` (or the raw JSON when ``compress`` is false)."""
        body = self._compressor.compress(json_body) if compress else json_body
        if len(body) > MAX_MESSAGE_SIZE:
            raise LocalProtocolError(
                f"map message of {len(body)} bytes exceeds the {MAX_MESSAGE_SIZE}-byte client limit"
            )
        return _LENGTH.pack(len(body)) + body


KEEPALIVE_JSON = b'{"KeepAlive":true}'
KEEPALIVE_MESSAGE = MapMessageEncoder().encode(KEEPALIVE_JSON)
KEEPALIVE_MESSAGE_RAW = MapMessageEncoder().encode(KEEPALIVE_JSON, compress=False)


class MapStreamDecoder:
    """Client side: split a map response body into messages and return their JSON bytes.

    ``compressed`` must match the ``Compress`` field of the request. Raises
    ``RemoteProtocolError`` for an oversized message or a body that is not one valid zstd
    frame; the stream is unusable afterwards.
    """

    def __init__(self, *, compressed: bool = True, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._compressed = compressed
        self._decompressor = zstandard.ZstdDecompressor()
        self._max = max_message_size
        self._buffer = bytearray()
        self._failure: str | None = None

    def receive_data(self, data: bytes) -> list[bytes]:
        if self._failure is not None:
            raise RemoteProtocolError(f"map stream already failed: {self._failure}")
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, pos)
            if length > self._max:
                self._fail(f"map message of {length} bytes exceeds the {self._max}-byte limit")
            start = pos + _LENGTH.size
            if end - start < length:
                break
            body = bytes(buffer[start : start + length])
            messages.append(self._decompress(body) if self._compressed else body)
            pos = start + length
        del buffer[:pos]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still buffered (non-zero at end of stream = truncated)."""
        return len(self._buffer)

    def _decompress(self, body: bytes) -> bytes:
        # A decompressobj copes with frames that omit the content size (Go's encoder may).
        decompressor = self._decompressor.decompressobj()
        try:
            out = decompressor.decompress(body)
        except zstandard.ZstdError as exc:
            self._fail(f"map message is not valid zstd: {exc}")
        if not decompressor.eof:
            self._fail("map message holds a truncated zstd frame")
        if decompressor.unused_data:
            self._fail("map message holds bytes after its zstd frame")
        if len(out) > self._max:
            self._fail(f"map message decompresses to {len(out)} bytes, over the {self._max}-byte limit")
        return out

    def _fail(self, problem: str) -> NoReturn:
        self._failure = problem
        self._buffer.clear()
        raise RemoteProtocolError(problem)
