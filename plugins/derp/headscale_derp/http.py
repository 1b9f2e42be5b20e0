"""The HTTP edge of the relay: the ``/derp`` upgrade, probes, and a standalone front end.

``DerpUpgradeHandler`` is what the core's main listener calls for ``/derp`` (hook
``headscale_connection_upgrades``): it gets the parsed head and the raw stream with every
byte that followed the head, so a fast-start ClientInfo pipelined behind the request is not
lost (the reason ``/derp`` cannot go through aiohttp). ``serve_standalone`` is a small
HTTP/1.1 server that parses heads itself and calls the same handler; it also answers the
probe paths, using the same response builders as the aiohttp routes in ``routes.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from headscale_core.providers import RequestHead
from headscale_derp.frames import PROTOCOL_VERSION
from headscale_derp.relay import Relay

log = logging.getLogger("headscale_derp.http")

MAX_HEAD = 16 << 10
MAX_BODY = 4 << 10
_CHALLENGE = re.compile(r"[A-Za-z0-9._:-]{0,64}")
NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"
_REASONS = {
    101: "Switching Protocols", 200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
    405: "Method Not Allowed", 413: "Content Too Large", 426: "Upgrade Required", 501: "Not Implemented",
    503: "Service Unavailable",
}  # fmt: skip

VerifyNodeKey = Callable[[bytes], Awaitable[bool]]
"""Whether a node key (raw 32 bytes) belongs to a registered node."""


class BadRequest(Exception):
    """The client sent a request head this server cannot parse; answer 400 and close."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def to_bytes(self, *, head_only: bool = False, close: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.status not in (101, 204):
            lines.append(f"Content-Length: {len(self.body)}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else self.body)


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse ``METHOD target HTTP/1.x`` and headers (names lower-cased)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes any byte
        raise BadRequest(str(exc)) from exc
    lines = text.rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return RequestHead(parts[0], parts[1], parts[2], tuple(headers))


def upgrade_response(server_key: bytes) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n"
        f"Derp-Version: {PROTOCOL_VERSION}\r\nDerp-Public-Key: {server_key.hex()}\r\n\r\n"
    ).encode()


def probe_response(method: str) -> Response:
    """``/derp/probe`` and ``/derp/latency-check``: netcheck's HTTPS latency fallback."""
    if method not in ("GET", "HEAD"):
        return Response(405, (("Content-Type", "text/plain"),), b"bogus probe method")
    return Response(200, (("Access-Control-Allow-Origin", "*"),))


def generate_204_response(challenge: str) -> Response:
    """Captive-portal check: 204, echoing a well-formed ``X-Tailscale-Challenge``."""
    headers = [("Cache-Control", NO_CACHE)]
    if challenge and _CHALLENGE.fullmatch(challenge):
        headers.append(("X-Tailscale-Response", f"response {challenge}"))
    return Response(204, tuple(headers))


async def verify_response(body: bytes, verify: VerifyNodeKey) -> Response:
    """Answer derper's ``-verify-client-url`` webhook: ``{"NodePublic": "nodekey:<hex>"}``
    gets ``{"Allow": true}`` only for a registered node key."""
    if len(body) > MAX_BODY:
        return Response(413, (("Content-Type", "text/plain"),), b"admission request larger than 4 KiB")
    try:
        request = json.loads(body)
        node_public = str(request["NodePublic"])
        key = bytes.fromhex(node_public.removeprefix("nodekey:"))
        if len(key) != 32:
            raise ValueError(f"node key of {len(key)} bytes")
    except (ValueError, KeyError, TypeError) as exc:
        message = f'bad admission request, want {{"NodePublic":"nodekey:<64 hex>"}}: {exc}'
        return Response(400, (("Content-Type", "text/plain"),), message.encode())
    allow = await verify(key)
    return Response(200, (("Content-Type", "application/json"),), json.dumps({"Allow": allow}).encode())


class DerpUpgradeHandler:
    """``/derp``: checks the Upgrade header, writes 101 unless fast start, runs the relay.

    ``relay`` is a callable so the plugin can hand the core a handler before the relay's key
    is loaded; until then clients get 503 and retry.
    """

    def __init__(self, relay: Relay | Callable[[], Relay | None]) -> None:
        self._relay = relay if callable(relay) and not isinstance(relay, Relay) else (lambda: relay)

    async def __call__(
        self,
        head: RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffered: bytes,
    ) -> None:
        relay = self._relay()
        upgrade = head.header("upgrade").lower()
        if relay is None:
            await _finish(writer, Response(503, (("Retry-After", "5"),), b"DERP relay is starting"))
            return
        if upgrade not in ("derp", "websocket"):
            await _finish(
                writer, Response(426, (("Content-Type", "text/plain"),), b"DERP requires connection upgrade")
            )
            return
        if upgrade == "websocket" and "derp" in head.header("sec-websocket-protocol").lower():
            # The core's listener gives WebSocket upgrades to aiohttp (``websocket.py``); this
            # raw front end has no WebSocket framing.
            message = b"WebSocket DERP is served by the main listener; use Upgrade: DERP here"
            await _finish(writer, Response(501, (("Content-Type", "text/plain"),), message))
            return
        if head.header("derp-fast-start") != "1":
            writer.write(upgrade_response(relay.public_key))
        await relay.serve(reader, writer, buffered, ideal=not head.header("ideal-node"))


async def _finish(writer: asyncio.StreamWriter, response: Response) -> None:
    writer.write(response.to_bytes(close=True))
    try:
        await writer.drain()
    finally:
        writer.close()


async def answer_plain(head: RequestHead, body: bytes, verify: VerifyNodeKey | None) -> Response:
    """The non-upgrade paths of the standalone server."""
    path = head.path
    if path in ("/derp/probe", "/derp/latency-check"):
        return probe_response(head.method)
    if path == "/generate_204":
        return generate_204_response(head.header("x-tailscale-challenge"))
    if path == "/verify" and verify is not None:
        if head.method != "POST":
            return Response(405, (("Allow", "POST"),))
        return await verify_response(body, verify)
    return Response(404, (("Content-Type", "text/plain"),), b"not found")


class StandaloneServer:
    """The standalone listener; ``close()`` also drops live connections (asyncio's does not)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    @property
    def sockets(self) -> tuple[Any, ...]:
        assert self.server is not None
        return tuple(self.server.sockets)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            writer.transport.abort()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


async def serve_standalone(
    host: str,
    port: int,
    handler: DerpUpgradeHandler,
    *,
    ssl: ssl_module.SSLContext | None = None,
    verify: VerifyNodeKey | None = None,
    idle_timeout: float = 30.0,
) -> StandaloneServer:
    """Listen on ``host:port`` (0 picks a port; read it from ``.port``)."""
    standalone = StandaloneServer()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        standalone.connections.add(writer)
        try:
            await _serve_connection(reader, writer, handler, verify, idle_timeout)
        finally:
            standalone.connections.discard(writer)

    standalone.server = await asyncio.start_server(on_connection, host, port, ssl=ssl)
    return standalone


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: DerpUpgradeHandler,
    verify: VerifyNodeKey | None,
    idle_timeout: float,
) -> None:
    try:
        while True:
            async with asyncio.timeout(idle_timeout):
                raw = await reader.readuntil(b"\r\n\r\n")
            head = parse_request_head(raw)
            if head.path == "/derp":
                # The StreamReader still holds whatever followed the head.
                await handler(head, reader, writer, b"")
                return
            length = int(head.header("content-length", "0") or 0)
            if length > MAX_BODY:
                writer.write(Response(413).to_bytes(close=True))
                return
            body = await reader.readexactly(length) if length else b""
            response = await answer_plain(head, body, verify)
            close = head.header("connection").lower() == "close"
            writer.write(response.to_bytes(head_only=head.method == "HEAD", close=close))
            await writer.drain()
            if close:
                return
    except (BadRequest, ValueError) as exc:
        writer.write(Response(400, (), f"bad request: {exc}".encode()).to_bytes(close=True))
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
