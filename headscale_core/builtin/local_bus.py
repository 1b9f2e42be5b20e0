"""Built-in change bus for a single server process: delivery is a direct call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import ChangeBus
from headscale_core.server.context import ServerContext


class LocalBus:
    """With one instance every change is already applied locally, so there is nobody to tell."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Mapping[str, Any]], Awaitable[None]]] = []

    async def publish(self, change: Mapping[str, Any]) -> None:
        return None

    def subscribe(self, callback: Callable[[Mapping[str, Any]], Awaitable[None]]) -> None:
        self._subscribers.append(callback)

    async def aclose(self) -> None:
        self._subscribers.clear()


@hookimpl(trylast=True)
def headscale_change_buses() -> Mapping[str, Callable[[ServerContext], ChangeBus]]:
    return {"local": lambda ctx: LocalBus()}
