"""The CLI's one way to reach the server: the ``/api/v1`` REST API.

``open_client(config, plugins)`` picks the transport:

* remote, when ``cli.address`` (``HEADSCALE_CLI_ADDRESS``) is set: HTTP(S) with
  ``cli.api_key`` (``HEADSCALE_CLI_API_KEY``) as the bearer token;
* local, over the admin unix socket (``unix_socket``) of a running server, without a key;
* offline, when no server listens on that socket: an in-process core serving the same API
  application on a private socket (``cli.offline``), so every mode runs the same handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from headscale_core.config import Config, parse_duration
from headscale_core.errors import HeadscaleError


class ApiError(HeadscaleError):
    """The server refused a request; ``message`` is its explanation."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ApiClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: str = "") -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def call(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                   params: dict[str, str] | None = None) -> dict[str, Any]:
        """One request to ``/api/v1<path>``; the decoded JSON object, or ``ApiError``."""
        url = f"{self.base_url}/api/v1{path}"
        try:
            async with self.session.request(method, url, json=body, params=params, headers=self.headers) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"cannot reach the server at {self.base_url}: {exc}") from exc
        except TimeoutError as exc:
            raise ApiError(0, f"the server at {self.base_url} did not answer in time (cli.timeout)") from exc
        if status == 401:
            raise ApiError(401, "the server refused the API key (missing, wrong or expired): "
                                "set cli.api_key / HEADSCALE_CLI_API_KEY to a valid key")
        try:
            payload = json.loads(text) if text else {}
        except json.JSONDecodeError:
            payload = None
        if status != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise ApiError(status, message or f"HTTP {status}: {text.strip()[:200]}",
                           payload.get("code") if isinstance(payload, dict) else None)
        if not isinstance(payload, dict):
            raise ApiError(status, f"the server answered with something that is not a JSON object: {text[:200]}")
        return payload


def remote_settings(config: Config) -> tuple[str, str] | None:
    address = os.environ.get("HEADSCALE_CLI_ADDRESS") or config.cli.address
    api_key = os.environ.get("HEADSCALE_CLI_API_KEY") or config.cli.api_key
    if not address:
        return None
    if not api_key:
        raise ApiError(0, f"cli.address is {address} but no API key is set: create one on the server with "
                          "`headscale apikeys create` and set HEADSCALE_CLI_API_KEY or cli.api_key")
    if "://" not in address:
        address = f"https://{address}"
    return address, api_key


async def socket_is_live(path: Path) -> bool:
    """Does a server answer on this unix socket (not just a file left by a crashed one)?"""
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def open_client(config: Config, plugins: Any = None) -> AsyncIterator[ApiClient]:
    timeout = aiohttp.ClientTimeout(total=parse_duration(config.cli.timeout) or None)
    remote = remote_settings(config)
    if remote is not None:
        address, api_key = remote
        connector = aiohttp.TCPConnector(ssl=False) if config.cli.insecure else None
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            yield ApiClient(session, address, api_key)
        return
    socket = config.path(config.unix_socket)
    if await socket_is_live(socket):
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.UnixConnector(path=str(socket))) as s:
            yield ApiClient(s, "http://local")
        return
    from headscale_core.cli.offline import offline_socket

    async with offline_socket(config, plugins) as path, aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(path))) as session:
        yield ApiClient(session, "http://local")
