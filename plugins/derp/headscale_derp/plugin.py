"""The headscale-core plugin: hooks that mount the relay, STUN and the embedded region.

Hooks are synchronous and the relay's key comes from the async key store, so a
``DerpService`` per server context holds the relay: its lifespan loads the key and starts
the relay, STUN and mesh links; the ``/derp`` handler handed out earlier asks it for the
relay (503 until it is up).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from aiohttp import web

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import ConnectionUpgrade, DERPMapProvider, DERPRegionContribution
from headscale_derp.handshake import ClientInfo
from headscale_derp.http import DerpUpgradeHandler
from headscale_derp.mesh import mesh_links
from headscale_derp.relay import Relay
from headscale_derp.routes import probe_routes, verify_route
from headscale_derp.settings import DerpSettings, settings_from
from headscale_derp.stun import StunProtocol, stun_listener
from headscale_derp.websocket import derp_http_route

log = logging.getLogger("headscale_derp")

_EXTRAS_KEY = "headscale_derp.service"
EMBEDDED_REGION_PRIORITY = 1000  # the embedded region overrides urls/paths, like Headscale


class DerpService:
    """The relay of one server context, started by its lifespan."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.settings: DerpSettings = settings_from(ctx.config)
        self.relay: Relay | None = None
        self.stun: StunProtocol | None = None

    async def node_key_registered(self, node_key: bytes) -> bool:
        state = self.ctx.state
        if state is None:
            return False  # storage not open: refuse rather than relay for anyone
        return bool(await state.node_key_registered(node_key.hex()))

    async def _admit(self, node_key: bytes, info: ClientInfo, client_ip: str) -> bool:
        return await self.node_key_registered(node_key)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        settings = self.settings
        private_key = await self.ctx.keys.load_or_create("derp")
        relay = Relay(
            private_key,
            admit=self._admit if settings.verify_clients else None,
            mesh_key=settings.mesh_key,
            registry=self.ctx.registry,
        )
        async with AsyncExitStack() as stack:
            if settings.stun_listen_addr:
                self.stun = await stack.enter_async_context(
                    stun_listener(settings.stun_listen_addr, relay.stun_stats)
                )
            await stack.enter_async_context(mesh_links(relay, settings.mesh_with))
            self.relay = relay
            log.info("DERP relay nodekey:%s serving region %d", relay.public_key.hex(), settings.region_id)
            try:
                yield
            finally:
                self.relay = None
                self.stun = None
                relay.close_all()
                if relay.collector is not None:
                    self.ctx.registry.unregister(relay.collector)


class EmbeddedRegion:
    """``DERPMapProvider`` for the relay's own region."""

    def __init__(self, settings: DerpSettings) -> None:
        self.settings = settings

    async def fetch(self) -> DERPRegionContribution:
        return DERPRegionContribution(
            {self.settings.region_id: self.settings.region()}, priority=EMBEDDED_REGION_PRIORITY
        )


def service(ctx: Any) -> DerpService:
    """The context's ``DerpService``, created on first use."""
    existing = ctx.extras.get(_EXTRAS_KEY)
    if existing is None:
        existing = ctx.extras[_EXTRAS_KEY] = DerpService(ctx)
    return existing  # type: ignore[no-any-return]


@hookimpl
def headscale_connection_upgrades(ctx: Any) -> Mapping[str, ConnectionUpgrade]:
    svc = service(ctx)
    if not svc.settings.enabled:
        return {}
    return {"/derp": DerpUpgradeHandler(lambda: svc.relay)}


@hookimpl
def headscale_routes(ctx: Any) -> list[web.RouteDef]:
    svc = service(ctx)
    # /verify serves external derpers (-verify-client-url) even without the embedded relay.
    routes = [verify_route(svc.node_key_registered)]
    if svc.settings.enabled:
        routes += [*probe_routes(), derp_http_route(lambda: svc.relay)]
    return routes


@hookimpl
def headscale_lifespans(ctx: Any) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    svc = service(ctx)
    return [svc.lifespan] if svc.settings.enabled else []


@hookimpl
def headscale_derp_map_providers(ctx: Any) -> list[DERPMapProvider]:
    settings = service(ctx).settings
    if not (settings.enabled and settings.automatically_add_embedded_derp_region):
        return []
    return [EmbeddedRegion(settings)]
