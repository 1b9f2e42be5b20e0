"""Pending interactive registrations and the client long-polls waiting on them.

The record lives in the database (so an approval on any instance counts); the waiting
future lives in the process that holds the client's request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class PendingRegistration:
    id: str
    machine_key: str
    node_key: str
    hostinfo: dict[str, Any] = field(default_factory=dict, compare=False)
    old_node_key: str = ""
    ephemeral: bool = False
    expiry: datetime | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None

    @property
    def hostname(self) -> str:
        return str(self.hostinfo.get("Hostname") or "")


@dataclass(frozen=True)
class RegistrationOutcome:
    """How a pending registration ended: a node, or the reason it was refused."""

    node_id: int | None = None
    error: str = ""


class Waiters:
    """Futures of clients long-polling (``Followup``) for a registration to complete."""

    def __init__(self) -> None:
        self._futures: dict[str, list[asyncio.Future[RegistrationOutcome]]] = {}

    def wait(self, reg_id: str) -> asyncio.Future[RegistrationOutcome]:
        fut: asyncio.Future[RegistrationOutcome] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(reg_id, []).append(fut)
        return fut

    def forget(self, reg_id: str, fut: asyncio.Future[RegistrationOutcome]) -> None:
        futs = self._futures.get(reg_id, [])
        if fut in futs:
            futs.remove(fut)
        if not futs:
            self._futures.pop(reg_id, None)

    def resolve(self, reg_id: str, outcome: RegistrationOutcome) -> None:
        for fut in self._futures.pop(reg_id, []):
            if not fut.done():
                fut.set_result(outcome)
