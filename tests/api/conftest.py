"""A running in-process server (real listeners, SQLite in a temp dir) and an HTTP client for ``/api/v1``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.testing.inprocess import RunningServer, running


class EventRecorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def headscale_event(self, event: Event) -> None:
        self.events.append(event)

    def actors(self, kind: str) -> list[str]:
        return [e.actor for e in self.events if e.kind == kind]


class ApiClient:
    """Raw HTTP against the server: returns (status, parsed JSON or text)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str | None) -> None:
        self.session = session
        self.base = base
        self.key = key

    async def call(self, method: str, path: str, *, key: str | None | bool = True, body: Any = None,
                   raw: bytes | None = None, params: dict[str, str] | None = None) -> tuple[int, Any]:
        headers = {}
        token = self.key if key is True else key
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(method, self.base + path, headers=headers, data=data,
                                        params=params) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, json.loads(text)
            return resp.status, text

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self.call(method, path, **kwargs)
        assert status == 200, (status, body)
        return body


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hsapi", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(tmp_path: Path, short_dir: Path) -> AsyncIterator[RunningServer]:
    async with running(tmp_path, policy={"mode": "database"}, unix_socket=str(short_dir / "hs.sock")) as srv:
        yield srv


@pytest.fixture
def events(server: RunningServer) -> EventRecorder:
    recorder = EventRecorder()
    server.ctx.plugins.pm.register(recorder)
    return recorder


@pytest.fixture
async def admin_key(server: RunningServer) -> str:
    _, full = await server.state.create_api_key(actor="test")
    return full


@pytest.fixture
async def api(server: RunningServer, admin_key: str) -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, server.url + "/api/v1", admin_key)
