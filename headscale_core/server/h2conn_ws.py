"""The WebSocket variant of ``/ts2021`` (browser and js/wasm clients), as an aiohttp handler.

``GET /ts2021?X-Tailscale-Handshake=<base64>`` with ``Sec-WebSocket-Protocol:
tailscale-control-protocol``. Binary messages carry the same byte stream as the raw upgrade
(51-byte handshake response, then Noise records); message boundaries mean nothing. As in Go's
server there is no early payload on this path. The HTTP/2 session is the one ``serve_ts2021``
runs; only the byte pipe differs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import deque

from aiohttp import WSCloseCode, WSMsgType, web

from headscale_core.protocol.errors import RemoteProtocolError
from headscale_core.protocol.noise import HandshakeError
from headscale_core.server.h2conn import UPGRADE_PROTOCOL, format_address, responder_for
from headscale_core.server.h2session import ByteChannel, H2Session, Handler

log = logging.getLogger("headscale_core.server.h2conn")

_HIGH_WATER = 1 << 20


async def serve_ts2021_websocket(
    request: web.Request,
    *,
    private_key: bytes,
    handler: Handler,
    max_body: int = 1 << 20,
) -> web.WebSocketResponse:
    """Serve one WebSocket ts2021 connection until it ends; return the finished response."""
    remote = _remote(request)
    ws = web.WebSocketResponse(protocols=(UPGRADE_PROTOCOL,), compress=False, autoping=True)
    await ws.prepare(request)
    if ws.ws_protocol != UPGRADE_PROTOCOL:
        await _close(ws, remote, "client must select subprotocol tailscale-control-protocol")
        return ws
    try:
        initiation = base64.b64decode(request.query.get("X-Tailscale-Handshake", ""), validate=True)
    except (binascii.Error, ValueError):
        initiation = b""
    if not initiation:
        await _close(ws, remote, "missing or bad X-Tailscale-Handshake query parameter")
        return ws
    try:
        result = responder_for(private_key).respond(initiation)
    except HandshakeError as exc:
        if exc.error_frame:
            await ws.send_bytes(exc.error_frame)
        await _close(ws, remote, f"Noise handshake failed: {exc}")
        return ws
    channel = WebSocketChannel(ws)
    channel.write(result.response)
    session = H2Session(
        channel,
        result.transport,
        handler,
        machine_key=result.machine_key,
        capver=result.capver,
        remote=remote,
        max_body=max_body,
    )
    try:
        await session.run()
    except (ConnectionError, RemoteProtocolError) as exc:
        log.info("ts2021-ws %s: connection lost: %s", remote, exc)
    finally:
        await channel.close()
    return ws


class WebSocketChannel(ByteChannel):
    """A ``ByteChannel`` over an aiohttp WebSocket: one writer task keeps messages in order."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._has_data = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._error: BaseException | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def read(self) -> bytes:
        while True:
            message = await self._ws.receive()
            if message.type == WSMsgType.BINARY:
                if message.data:
                    return bytes(message.data)
                continue
            if message.type == WSMsgType.TEXT:
                raise RemoteProtocolError("text WebSocket message on a binary ts2021 stream")
            return b""

    def write(self, data: bytes) -> None:
        if self._error is None:
            self._queue.append(data)
            self._queued += len(data)
            self._has_data.set()
            if self._queued > _HIGH_WATER:
                self._drained.clear()

    async def drain(self) -> None:
        await self._drained.wait()
        if self._error is not None:
            raise ConnectionResetError(f"WebSocket write failed: {self._error}")

    def backlog(self) -> int:
        return self._queued

    async def close(self) -> None:
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        await self._ws.close()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._has_data.wait()
                while self._queue:
                    data = self._queue.popleft()
                    await self._ws.send_bytes(data)
                    self._queued -= len(data)
                    if self._queued <= _HIGH_WATER:
                        self._drained.set()
                self._has_data.clear()
        except (ConnectionError, RuntimeError) as exc:  # aiohttp raises both on a closed socket
            self._error = exc
            self._drained.set()


async def _close(ws: web.WebSocketResponse, remote: str, problem: str) -> None:
    log.info("ts2021-ws %s: closing: %s", remote, problem)
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=problem.encode()[:120])


def _remote(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return format_address(peer) if peer else request.remote or "unknown"
