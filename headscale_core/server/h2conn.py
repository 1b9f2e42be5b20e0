"""HTTP/2 over a Noise transport: the asyncio shell that turns a ts2021 connection into requests.

Data path: ``server/ts2021`` parses the HTTP/1.1 upgrade and calls ``serve_ts2021``, which
answers the Noise handshake (``protocol/noise``), then runs an ``h2`` server connection over the
decrypted byte stream. Each complete request becomes a ``MachineRequest`` handed, with a
``ResponseStream``, to the handler coroutine in its own task, so a long-lived map stream, lite
updates and registration run side by side on one connection.

Back-pressure: ``ResponseStream.send_data`` sends only within the peer's HTTP/2 windows and waits
for WINDOW_UPDATE, then for the socket to drain, so a slow client never makes us buffer more
than one window per stream. Request bodies are capped at ``max_body``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging

from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.noise import HandshakeError, NoiseResponder, encode_early_payload
from headscale_core.providers import RequestHead
from headscale_core.server.h2session import (
    ByteChannel,
    H2Session,
    Handler,
    MachineRequest,
    ResponseStream,
    StreamClosed,
)

log = logging.getLogger(__name__)

UPGRADE_PROTOCOL = "tailscale-control-protocol"
HANDSHAKE_HEADER = "x-tailscale-handshake"
SWITCHING_PROTOCOLS = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n"
)

__all__ = [
    "Handler",
    "MachineRequest",
    "ResponseStream",
    "StreamClosed",
    "serve_ts2021",
    "UPGRADE_PROTOCOL",
]


async def serve_ts2021(
    head: RequestHead,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    buffered: bytes,
    *,
    private_key: bytes,
    handler: Handler,
    early_payload: bytes | None = None,
    max_body: int = 1 << 20,
) -> None:
    """Serve one ``/ts2021`` upgrade until the connection ends.

    ``early_payload`` is the JSON of a ``tailcfg.EarlyNoise`` to send before HTTP/2 (framed
    here). Returns after the connection is closed; never raises for a misbehaving client.
    """
    remote = peer_address(writer)
    problem = _check_upgrade(head)
    initiation = b""
    if problem is None:
        initiation, problem = _decode_handshake(head.header(HANDSHAKE_HEADER))
    del head  # this frame lives as long as the connection
    if problem is not None:
        log.info("ts2021 %s: refusing upgrade: %s", remote, problem)
        await _reply_plain(writer, 400, problem)
        return
    channel = StreamChannel(reader, writer)
    try:
        # Like Go's server, switch protocols first: handshake errors travel on the raw stream.
        try:
            result = responder_for(private_key).respond(initiation)
        except HandshakeError as exc:
            log.warning("ts2021 %s: Noise handshake failed: %s", remote, exc)
            channel.write(SWITCHING_PROTOCOLS + (exc.error_frame or b""))
            await channel.drain()
            return
        first = SWITCHING_PROTOCOLS + result.response
        if early_payload is not None:
            first += result.transport.encrypt(encode_early_payload(early_payload))
        channel.write(first)
        session = H2Session(
            channel,
            result.transport,
            handler,
            machine_key=result.machine_key,
            capver=result.capver,
            remote=remote,
            max_body=max_body,
        )
        handed = [buffered]  # this frame lives as long as the connection: hold no bytes
        del buffered
        await session.run(handed.pop())
    except (ConnectionError, RemoteProtocolError) as exc:
        log.info("ts2021 %s: connection lost: %s", remote, exc)
    finally:
        await channel.close()


class StreamChannel(ByteChannel):
    """A ``ByteChannel`` over asyncio streams (the raw TCP/TLS upgrade)."""

    _HIGH_WATER = 1 << 20

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport  # written to directly: a fan-out writes to thousands

    async def read(self) -> bytes:
        return await self._reader.read(1 << 16)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("connection closed")
        await self._writer.drain()

    def backlog(self) -> int:
        return self._transport.get_write_buffer_size()

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


@functools.lru_cache(maxsize=4)
def responder_for(private_key: bytes) -> NoiseResponder:
    """A shared responder per server key (its public half is computed once)."""
    return NoiseResponder(private_key)


def _check_upgrade(head: RequestHead) -> str | None:
    upgrade = head.header("upgrade").strip().lower()
    if not upgrade:
        return "missing next protocol: send 'Upgrade: tailscale-control-protocol'"
    if upgrade != UPGRADE_PROTOCOL:
        return f"unsupported next protocol {upgrade!r}: send 'Upgrade: tailscale-control-protocol'"
    return None


def _decode_handshake(value: str) -> tuple[bytes, str | None]:
    if not value:
        return b"", "missing X-Tailscale-Handshake header with the Noise initiation"
    try:
        return base64.b64decode(value, validate=True), None
    except (binascii.Error, ValueError):
        return b"", "X-Tailscale-Handshake header is not valid base64"


async def _reply_plain(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = text.encode() + b"\n"
    reason = {400: "Bad Request", 500: "Internal Server Error"}.get(status, "Error")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def peer_address(writer: asyncio.StreamWriter) -> str:
    """``ip:port`` (``[ip]:port`` for IPv6) of the client, for logs."""
    return format_address(writer.get_extra_info("peername"))


def format_address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer or "unknown")
