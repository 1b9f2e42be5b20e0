"""DERP over WebSocket (reference §1.3): the same byte stream, carried in binary messages.

The core's listener hands WebSocket upgrades to aiohttp, so ``/derp`` with
``Sec-WebSocket-Protocol: derp`` arrives here as an aiohttp route. ``WebSocketStream`` makes
the socket look like the reader/writer pair ``Relay.serve`` drives: messages are joined into
one stream (a frame may span messages, or several share one), and each batch the session
writes goes out as one binary message. A text message breaks the protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from headscale_derp.frames import RemoteProtocolError
from headscale_derp.http import Response
from headscale_derp.relay import Relay


class WebSocketStream:
    """Reader, writer and transport in one, over an aiohttp ``WebSocketResponse``."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws = ws
        self._request = request
        self.transport = self
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    # reader side

    async def read(self, n: int = -1) -> bytes:
        if self._closed:
            return b""
        message = await self._ws.receive()
        if message.type is WSMsgType.BINARY:
            return bytes(message.data)
        if message.type is WSMsgType.TEXT:
            raise RemoteProtocolError("text WebSocket message on a DERP connection (binary only)")
        return b""  # close, closing, closed or error

    # writer side

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._flushed.clear()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            self.abort()
        finally:
            self._flushed.set()

    async def drain(self) -> None:
        await self._flushed.wait()

    def get_write_buffer_size(self) -> int:
        transport = self._request.transport
        return self._pending_bytes + (transport.get_write_buffer_size() if transport else 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._request.transport
        return transport.get_extra_info(name, default) if transport else default

    def abort(self) -> None:
        self._closed = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        self.abort()

    async def wait_closed(self) -> None:
        return None


def derp_http_route(relay: Callable[[], Relay | None]) -> web.RouteDef:
    """``GET /derp`` on aiohttp: WebSocket DERP, else 426 (raw upgrades never reach aiohttp)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        current = relay()
        protocols = request.headers.get("Sec-WebSocket-Protocol", "").lower()
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if current is None:
            return web.Response(status=503, text="DERP relay is starting", headers={"Retry-After": "5"})
        if not (is_ws and "derp" in protocols):
            answer = Response(426, (), b"DERP requires connection upgrade")
            return web.Response(status=answer.status, body=answer.body, content_type="text/plain")
        ws = web.WebSocketResponse(protocols=("derp",), compress=False, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        if ws.ws_protocol != "derp":
            await ws.close(code=1008, message=b"client must speak the derp subprotocol")
            return ws
        stream = WebSocketStream(ws, request)
        await current.serve(stream, stream, ideal=not request.headers.get("Ideal-Node"))  # type: ignore[arg-type]
        return ws

    return web.get("/derp", handler, allow_head=False)
