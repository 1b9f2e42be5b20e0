"""Framing of the ``/machine/map`` response body (sans-IO).

Each MapResponse on a map stream is ``uint32 little-endian length || body``, where the body is
the JSON compressed with zstd when the request said ``Compress: "zstd"`` (every current client
does) and the raw JSON otherwise. A zstd body may be several frames one after the other (RFC 8878
§3.1: a decoder concatenates their contents; tailscaled's decoder takes "zero or more frames"):
the mapper builds full maps from frames it compressed once for many recipients.

The mapper serialises a message once, ``MapMessageEncoder`` frames it once, and the resulting
bytes are shared by every recipient; only the Noise encryption below is per connection.
``MapStreamDecoder`` is the client side.
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
        return self.frame([self._compressor.compress(json_body) if compress else json_body])

    def compress(self, json_part: bytes) -> bytes:
        """One zstd frame of ``json_part``: a piece of a message for ``frame``."""
        return self._compressor.compress(json_part)

    @staticmethod
    def frame(parts: list[bytes]) -> bytes:
        """``LE32(len) || parts``: a message body made of zstd frames (of consecutive pieces of
        one JSON document) or of raw JSON."""
        size = sum(map(len, parts))
        if size > MAX_MESSAGE_SIZE:
            raise LocalProtocolError(
                f"map message of {size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte client limit"
            )
        return b"".join((_LENGTH.pack(size), *parts))


KEEPALIVE_JSON = b'{"KeepAlive":true}'
KEEPALIVE_MESSAGE = MapMessageEncoder().encode(KEEPALIVE_JSON)
KEEPALIVE_MESSAGE_RAW = MapMessageEncoder().encode(KEEPALIVE_JSON, compress=False)


class MapStreamDecoder:
    """Client side: split a map response body into messages and return their JSON bytes.

    ``compressed`` must match the ``Compress`` field of the request. Raises
    ``RemoteProtocolError`` for an oversized message or a body that is not a sequence of valid
    zstd frames; the stream is unusable afterwards.
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
        if not buffer and len(data) >= _LENGTH.size:
            # Exactly one whole message and nothing pending (a delta's usual chunk): no buffering.
            (length,) = _LENGTH.unpack_from(data)
            if len(data) == _LENGTH.size + length and length <= self._max:
                body = data[_LENGTH.size:]
                return [self._decompress(body) if self._compressed else body]
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
        try:
            out = decompress_frames(self._decompressor, body, self._max)
        except ValueError as exc:
            self._fail(f"map message {exc}")
        return out

    def _fail(self, problem: str) -> NoReturn:
        self._failure = problem
        self._buffer.clear()
        raise RemoteProtocolError(problem)


def decompress_frames(decompressor: zstandard.ZstdDecompressor, body: bytes,
                      limit: int = MAX_MESSAGE_SIZE) -> bytes:
    """The concatenated contents of the zstd frames in ``body`` (at least one).

    Raises ``ValueError`` saying what is wrong: not zstd, a truncated frame, or more than
    ``limit`` bytes decompressed."""
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        # A decompressobj copes with frames that omit the content size (Go's encoder may).
        frame = decompressor.decompressobj()
        try:
            content = frame.decompress(rest)
        except zstandard.ZstdError as exc:
            where = f"after {len(out)} whole zstd frame(s)" if out else "at its start"
            raise ValueError(f"is not valid zstd {where}: {exc}") from None
        if not frame.eof:
            raise ValueError("holds a truncated zstd frame")
        size += len(content)
        if size > limit:
            raise ValueError(f"decompresses to more than the {limit}-byte limit")
        out.append(content)
        rest = frame.unused_data
        if not rest:
            return out[0] if len(out) == 1 else b"".join(out)
