"""The interfaces behind the hooks: what a plugin's provider objects must offer.

Hooks (``hookspecs.py``) are synchronous and return these provider classes or objects; their
methods are ``async`` and awaited by the core. Each protocol here is structural: a plugin does
not need to inherit from it, only to have the methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from headscale_core.config import Config


class KeyStore(Protocol):
    """Custody of the server's private keys (the Noise machine key, the DERP relay key).

    Keys are raw 32-byte X25519 private scalars, named by purpose (``"noise"``, ``"derp"``).
    """

    async def load_or_create(self, name: str) -> bytes:
        """Return the private key ``name``, generating and persisting it on first use.

        Must raise ``KeyStoreError`` (never silently create a new key) when an existing key
        cannot be read: a new key would cut off every client.
        """
        ...

    async def rotate(self, name: str) -> bytes:
        """Replace key ``name`` with a fresh one and return it."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class KeyStoreFactory(Protocol):
    def __call__(self, config: Config) -> KeyStore: ...


@dataclass(frozen=True)
class DERPRegionContribution:
    """Regions a relay provider adds to the DERP map, as ``tailcfg.DERPRegion`` JSON objects.

    ``regions`` maps region ID to the region object (``RegionID``, ``RegionCode``,
    ``RegionName``, ``Nodes``). ``priority``: on a region-ID clash the higher wins.
    """

    regions: Mapping[int, dict[str, Any]]
    priority: int = 0


class DERPMapProvider(Protocol):
    """Supplies DERP regions. ``fetch`` is called at start-up and every ``derp.update_frequency``."""

    async def fetch(self) -> DERPRegionContribution: ...


class PolicySource(Protocol):
    """Where the tailnet policy text comes from (``policy.mode``)."""

    async def load(self) -> str | None:
        """Return the current policy text (HuJSON), or None when no policy is set (allow all)."""
        ...

    async def store(self, text: str) -> None:
        """Persist a new policy (``headscale policy set``); raise ``PolicySourceReadOnly`` if the
        source cannot be written (a file source managed outside the server)."""
        ...

    def watch(self) -> AsyncIterator[None]:
        """Yield whenever the policy may have changed (file modified, SIGHUP, …)."""
        ...


@dataclass(frozen=True)
class Identity:
    """Who logged in, as an authentication provider saw it."""

    provider: str
    subject: str
    name: str
    email: str = ""
    display_name: str = ""
    groups: tuple[str, ...] = ()
    profile_pic_url: str = ""


@dataclass(frozen=True)
class Deny:
    """An authorisation veto, with the reason shown to the person logging in."""

    reason: str


class AuthProvider(Protocol):
    """An interactive login method offered on the ``/register/<id>`` page."""

    name: str
    title: str

    def login_url(self, registration_id: str) -> str | None:
        """The URL of this provider's login flow for a pending registration, or None if the
        provider has no web flow (CLI approval)."""
        ...


class ChangeBus(Protocol):
    """Fan-out of committed changes between server instances sharing one database."""

    async def publish(self, change: Mapping[str, Any]) -> None: ...

    def subscribe(self, callback: Callable[[Mapping[str, Any]], Awaitable[None]]) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ConnectionUpgrade(Protocol):
    """Takes over a raw connection after an HTTP/1.1 upgrade request on the main listener.

    Used for protocols that aiohttp cannot hand over without losing bytes (``/ts2021``,
    ``/derp``). ``head`` is the parsed request; ``buffered`` the bytes that arrived after it.
    """

    async def __call__(
        self,
        head: RequestHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffered: bytes,
    ) -> None: ...


@dataclass(frozen=True)
class RequestHead:
    """An HTTP/1.1 request line and headers (header names lower-cased)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = field(default=())

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.target.split("?", 1)[1])) if "?" in self.target else {}


class KeyStoreError(Exception):
    """A key store cannot provide a key; the message names the store, the key and the fix."""


class PolicySourceReadOnly(Exception):
    """The configured policy source cannot be written."""
