"""A simulated Tailscale machine for in-process tests: its keys, a ts2021 client, the map
requests a real client sends, and helpers to read map streams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from headscale_core.protocol.keys import PrivateKey
from headscale_core.testing.tsclient import TSClient


class SimNode:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.machine, self.node, self.disco = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
        self.client: TSClient | None = None

    async def connect(self, url: str | None = None) -> TSClient:
        self.client = await TSClient.connect(url or self.url, machine_private=self.machine)
        return self.client

    async def register(self, auth_key: str) -> dict[str, Any]:
        assert self.client is not None, "connect() first"
        return await self.client.register(self.node.node_public(), auth_key=auth_key,
                                          hostinfo={"Hostname": self.name})

    async def join(self, auth_key: str) -> TSClient:
        """Connect and register with a pre-auth key."""
        client = await self.connect()
        await self.register(auth_key)
        return client

    def map_request(self, **extra: Any) -> dict[str, Any]:
        return {"Version": 130, "NodeKey": str(self.node.node_public()), "DiscoKey": str(self.disco.disco_public()),
                "Stream": True, "Compress": "zstd", "KeepAlive": True,
                "Hostinfo": {"Hostname": self.name, "OS": "linux"}, **extra}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def next_message(stream: Any, within: float = 5.0) -> dict[str, Any]:
    """The next map message that is not a keep-alive."""
    while True:
        msg = await asyncio.wait_for(stream.__anext__(), within)
        if not msg.get("KeepAlive"):
            return msg


async def drain(stream: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Messages until the stream has been quiet for ``quiet`` seconds (keep-alives skipped)."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            msg = await asyncio.wait_for(stream.__anext__(), quiet)
        except TimeoutError:
            return out
        if not msg.get("KeepAlive"):
            out.append(msg)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)
