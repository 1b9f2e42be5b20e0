"""A running in-process server (real listeners, SQLite in a temp dir) and an HTTP client for ``/api/v1``."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from headscale_core.config import Config, load_config
from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.app import close_core, open_core, plugin_sections, running_server
from headscale_core.testing.inprocess import RunningServer


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


def builtin_plugins() -> Plugins:
    """Only the core's built-in plugins: these tests must not depend on what else is installed."""
    return Plugins(make_plugin_manager(load_entrypoints=False))


def write_config(data_dir: Path, socket: Path, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "server_url": "http://127.0.0.1:8080",
        "listen_addr": "127.0.0.1:0",
        "metrics_listen_addr": "",
        "data_dir": str(data_dir),
        "derp": {"urls": [], "paths": [], "server": {"enabled": False}},
        "unix_socket": str(socket),
        "policy": {"mode": "database"},
        **overrides,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(str(path), env={}, plugin_sections=plugin_sections(builtin_plugins()))


async def _settle(ctx: Any) -> None:
    """Let in-flight database work (the audit writer's last batch) finish before shutdown:
    a transaction cancelled at shutdown leaves an aiosqlite connection checked out, and its
    garbage collection later hangs the event loop of whichever test is running then."""
    pool = ctx.state.storage.engine.pool
    for _ in range(200):
        if pool.checkedout() == 0:
            return
        await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[RunningServer]:
    ctx = await open_core(config, plugins=builtin_plugins())
    try:
        async with running_server(ctx) as addresses:
            host, port = addresses["listen"][:2]
            yield RunningServer(ctx=ctx, url=f"http://{host}:{port}", addresses=addresses)
            await _settle(ctx)
    finally:
        await close_core(ctx)


@pytest.fixture
async def server(tmp_path: Path, short_dir: Path) -> AsyncIterator[RunningServer]:
    async with serving(write_config(tmp_path, short_dir / "hs.sock")) as srv:
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
