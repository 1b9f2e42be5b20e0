"""Test support: a relay behind the standalone HTTP front end on 127.0.0.1, and helpers.

Used by this plugin's tests and benchmarks; other plugins can use it to get a live relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from headscale_derp.client import DerpClient
from headscale_derp.handshake import generate_private_key
from headscale_derp.http import DerpUpgradeHandler, StandaloneServer, VerifyNodeKey, serve_standalone
from headscale_derp.relay import Relay


@dataclass
class RunningRelay:
    relay: Relay
    server: StandaloneServer
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/derp"

    async def client(self, key: bytes | None = None, **kwargs: object) -> DerpClient:
        return await DerpClient.connect(self.url, key or generate_private_key(), **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def start_relay(verify: VerifyNodeKey | None = None, **relay_kwargs: object) -> RunningRelay:
    registry = CollectorRegistry()
    relay = Relay(generate_private_key(), registry=registry, **relay_kwargs)  # type: ignore[arg-type]
    server = await serve_standalone("127.0.0.1", 0, DerpUpgradeHandler(relay), verify=verify)
    return RunningRelay(relay, server, registry)


async def stop_relay(running: RunningRelay) -> None:
    running.relay.close_all()
    running.server.close()
    await running.server.wait_closed()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` is true, polling every 10 ms; TimeoutError after ``within`` s.

    Polling is deliberate: the checks read relay state and metrics that have no event.
    """
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
