"""A minimal listener for the ts2021 tests: ``GET /key`` and ``/ts2021`` on 127.0.0.1, port 0.

The real listener is ``server/ts2021``; this one parses just enough HTTP/1.1 to hand the
connection to ``serve_ts2021``, which is the unit under test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from headscale_core.protocol.keys import PrivateKey
from headscale_core.providers import RequestHead
from headscale_core.server.h2conn import Handler, serve_ts2021

SERVER_KEY = PrivateKey(bytes(range(1, 33)))


class Ts2021TestServer:
    def __init__(self, handler: Handler, **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        await self.server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = raw.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers = tuple(
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(":") for line in lines if line)
            )
            head = RequestHead(method, target, version, headers)
            if head.path == "/key":
                body = json.dumps(
                    {"legacyPublicKey": "mkey:" + "0" * 64, "publicKey": str(SERVER_KEY.machine_public())}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                writer.close()
                return
            await serve_ts2021(
                head, reader, writer, b"", private_key=SERVER_KEY.raw, handler=self.handler, **self.options
            )
        except asyncio.CancelledError:
            # Python 3.11's start_server callback logs a cancelled connection task as an error.
            pass
        finally:
            self.connections.discard(task)


ServerFactory = Callable[..., Awaitable[Ts2021TestServer]]


@pytest.fixture
async def ts2021_server() -> AsyncIterator[ServerFactory]:
    started: list[Ts2021TestServer] = []

    async def start(handler: Handler, **options: Any) -> Ts2021TestServer:
        server = Ts2021TestServer(handler, **options)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()
