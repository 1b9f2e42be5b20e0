"""Incremental DERP frame reader: a byte stream in, ``(type, payload)`` pairs out.

Frames arrive split across TCP reads, TLS records and WebSocket messages, or several in one;
this is where they are cut apart. It keeps one buffer and an offset (no per-byte loops, no
copy per partial read), refuses an oversized known frame from its header alone, and skips
unknown frames by length without buffering them.
"""

from __future__ import annotations

from headscale_derp.frames import HEADER, HEADER_LEN, RemoteProtocolError, UnknownFrame, frame_name


class FrameReader:
    """Cuts a byte stream into ``(type, payload)`` pairs.

    ``limits`` maps a frame type to the largest payload accepted for it; a known type over
    its limit is a protocol error before any of its payload is buffered. Types missing from
    ``limits`` are skipped by length without buffering (``UnknownFrame``), so memory stays
    bounded whatever the peer sends.
    """

    def __init__(self, limits: dict[int, int]) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0

    def feed(self, data: bytes) -> None:
        if self._skip:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, bytes] | UnknownFrame | None:
        """The next whole frame, an ``UnknownFrame`` marker, or None when more bytes are needed."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_LEN:
            return None
        frame_type, length = HEADER.unpack_from(buf, pos)
        limit = self._limits.get(frame_type)
        if limit is None:
            start = pos + HEADER_LEN
            available = min(len(buf) - start, length)
            self._skip = length - available
            self._consume(start + available)
            return UnknownFrame(frame_type, length)
        if length > limit:
            raise RemoteProtocolError(
                f"{frame_name(frame_type)} frame of {length} bytes exceeds limit {limit}", frame_type
            )
        end = pos + HEADER_LEN + length
        if len(buf) < end:
            return None
        payload = bytes(buf[pos + HEADER_LEN : end])
        self._consume(end)
        return frame_type, payload

    def _consume(self, end: int) -> None:
        if end >= len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif end > 1 << 16:
            del self._buf[:end]
            self._pos = 0
        else:
            self._pos = end
