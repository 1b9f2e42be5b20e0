"""The main listener: reads each connection's first request head itself, then either hands
the raw connection (with every byte that followed the head) to an upgrade handler, or gives
the connection to aiohttp.

aiohttp has no supported way to take over a connection after a non-WebSocket ``101``, and
its upgrade path can lose bytes a client sends right after its request (DERP does). This is
the one place that touches connection takeover.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping

from aiohttp import web

from headscale_core.providers import ConnectionUpgrade, RequestHead

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024


def parse_head(raw: bytes) -> RequestHead | None:
    """Parse an HTTP/1.x request head (without the final blank line); None if malformed."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers.append((name.strip().lower(), value.strip()))
    return RequestHead(method=parts[0], target=parts[1], version=parts[2], headers=tuple(headers))


class TakenOver:
    """The raw connections handed to upgrade handlers, so shutdown can end them: a stopping
    server must drop its clients' streams, or they would never notice and reconnect."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    def add(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
        self.tasks.add(task)
        self.writers.add(writer)

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            self.writers.discard(writer)

        task.add_done_callback(done)

    async def close(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


class FrontProtocol(asyncio.Protocol):
    def __init__(self, aiohttp_factory: Callable[[], asyncio.Protocol],
                 upgrades: Mapping[str, ConnectionUpgrade], taken_over: TakenOver) -> None:
        self._aiohttp_factory = aiohttp_factory
        self._upgrades = upgrades
        self._taken_over = taken_over
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._decided:  # pragma: no cover - the transport has a new protocol by now
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._reject(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n")
            return
        self._decided = True
        head = parse_head(bytes(self._buffer[:end]))
        handler = self._upgrade_for(head) if head is not None else None
        assert self._transport is not None
        if head is not None and handler is not None:
            self._take_over(head, handler, bytes(self._buffer[end + 4:]))
        else:
            self._to_aiohttp()

    def _upgrade_for(self, head: RequestHead) -> ConnectionUpgrade | None:
        handler = self._upgrades.get(head.path)
        if handler is None:
            return None
        # A plain GET of an upgrade path without Upgrade (a browser, a probe) is aiohttp's,
        # except /ts2021 which answers the missing header itself.
        if not head.header("upgrade") and head.path != "/ts2021":
            return None
        if head.header("upgrade").lower() == "websocket":
            return None  # WebSocket variants are served by aiohttp routes
        return handler

    def _take_over(self, head: RequestHead, handler: ConnectionUpgrade, buffered: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport = self._transport
        assert transport is not None
        reader = asyncio.StreamReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)

        # run() lives as long as the connection: it holds neither the bytes nor the request head
        # (a ts2021 client's head is a kilobyte of headers that only the handshake reads).
        handed: list[object] = [head, buffered]
        path = head.path

        async def run() -> None:
            try:
                await handler(handed.pop(0), reader, writer, handed.pop())  # type: ignore[arg-type]
            except Exception:
                log.exception("upgrade handler for %s failed", path)
            finally:
                writer.close()

        self._taken_over.add(loop.create_task(run()), writer)

    def _to_aiohttp(self) -> None:
        transport = self._transport
        assert transport is not None
        proto = self._aiohttp_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(bytes(self._buffer))
        self._buffer.clear()

    def _reject(self, response: bytes) -> None:
        self._decided = True
        if self._transport is not None:
            self._transport.write(response)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._buffer.clear()


LISTEN_BACKLOG = 4096


async def start_listener(runner: web.AppRunner, host: str, port: int,
                         upgrades: Mapping[str, ConnectionUpgrade], taken_over: TakenOver,
                         ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    server = runner.server
    assert server is not None, "call runner.setup() first"
    loop = asyncio.get_running_loop()
    # After a restart every client redials within seconds: asyncio's default backlog of 100
    # drops the SYNs beyond it, and those clients wait out TCP's retransmission (1 s, 3 s, 7 s).
    # The kernel caps this at net.core.somaxconn.
    return await loop.create_server(lambda: FrontProtocol(server, upgrades, taken_over), host, port,
                                    ssl=ssl_context, reuse_address=True, backlog=LISTEN_BACKLOG)
