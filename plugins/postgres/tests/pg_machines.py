"""A fake Tailscale machine for in-process tests: keys, a ts2021 client, map requests."""

from __future__ import annotations

import asyncio
from typing import Any

from headscale_core.protocol.keys import PrivateKey
from headscale_core.testing.tsclient import TSClient


class Machine:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.machine = PrivateKey.generate()
        self.node = PrivateKey.generate()
        self.disco = PrivateKey.generate()
        self.client: TSClient | None = None

    async def connect(self, url: str | None = None) -> TSClient:
        self.client = await TSClient.connect(url or self.url, machine_private=self.machine)
        return self.client

    async def register(self, auth_key: str) -> dict[str, Any]:
        assert self.client is not None
        return await self.client.register(self.node.node_public(), auth_key=auth_key,
                                          hostinfo={"Hostname": self.name})

    def map_request(self, **extra: Any) -> dict[str, Any]:
        return {"Version": 130, "NodeKey": str(self.node.node_public()), "DiscoKey": str(self.disco.disco_public()),
                "Stream": True, "Compress": "zstd", "KeepAlive": True,
                "Hostinfo": {"Hostname": self.name, "OS": "linux"}, **extra}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def next_message(stream: Any, timeout: float = 5.0) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(stream.__anext__(), timeout)
        if not msg.get("KeepAlive"):
            return msg


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
