"""Server assembly and lifecycle: plugins, keys, storage, state, mapper, listeners.

``open_core`` builds everything that holds state (used by ``serve`` and by the CLI when no
server is running); ``run_server`` adds the listeners and background work and runs until a
signal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, generate_latest

from headscale_core.config import Config, parse_duration
from headscale_core.errors import ConfigError, InvalidRequest
from headscale_core.events import request_source
from headscale_core.mapper.batcher import Mapper
from headscale_core.metrics import Metrics
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.providers import ConnectionUpgrade
from headscale_core.server.context import ServerContext
from headscale_core.server.h2conn import serve_ts2021
from headscale_core.server.h2conn_ws import serve_ts2021_websocket
from headscale_core.server.heap import kept_heap
from headscale_core.server.listener import TakenOver, start_listener
from headscale_core.server.machine import MachineHandler
from headscale_core.server.web import web_routes
from headscale_core.state.auth import Registrar
from headscale_core.state.changes import DERPMapChanged, PolicyChanged
from headscale_core.state.service import StateService

log = logging.getLogger(__name__)


async def open_core(config: Config, *, plugins: Plugins | None = None, migrate: bool = True,
                    load_keys: bool = True) -> ServerContext:
    """Plugins, key store, storage and state: everything but listeners. ``load_keys=False``
    for tools that never speak to clients (the CLI's offline mode)."""
    plugins = plugins or Plugins(make_plugin_manager(block=config.plugins.block))
    keys = plugins.choose("headscale_key_stores", "keys.store", config.keys.store, "")(config)
    ctx = ServerContext(config=config, plugins=plugins, keys=keys, registry=CollectorRegistry())
    ctx.extras["metrics"] = Metrics(ctx.registry)
    backend = plugins.choose("headscale_storage_backends", "database.type", config.database.type, "")(config)
    plugins.choose("headscale_policy_sources", "policy.mode", config.policy.mode, "")
    bus_name = config.database.change_bus or backend.preferred_change_bus
    bus_factory = plugins.choose("headscale_change_buses", "database.change_bus", bus_name,
                                 "" if config.database.change_bus else
                                 f"preferred by database.type {config.database.type}")
    if load_keys:
        # Before the database is touched: a key store that cannot give the existing key
        # must stop start-up without creating or migrating anything.
        ctx.extras["noise_private"] = await keys.load_or_create("noise")
    backend.observe_transaction = ctx.extras["metrics"].db_duration.observe
    await backend.open(migrate_schema=migrate)
    state = StateService(config, backend, plugins, context=ctx)
    ctx.state = state
    try:
        await state.load()
    except Exception:
        await backend.close()
        raise
    ctx.extras["registrar"] = Registrar(state)
    ctx.extras["change_bus"] = bus_factory(ctx)
    state.attach_bus(ctx.extras["change_bus"])
    return ctx


async def close_core(ctx: ServerContext) -> None:
    if "change_bus" in ctx.extras:
        await ctx.extras["change_bus"].aclose()
    await ctx.state.close()
    await ctx.state.storage.close()
    await ctx.keys.aclose()


async def refresh_derp_map(ctx: ServerContext) -> bool:
    """Merge every provider's regions; True when the map changed."""
    regions: dict[int, tuple[int, dict[str, Any]]] = {}
    for provider in (p for group in ctx.plugins.hook.headscale_derp_map_providers(ctx=ctx) for p in group):
        try:
            contribution = await provider.fetch()
        except Exception:
            log.exception("DERP map provider %r failed; keeping the others", provider)
            continue
        for rid, region in contribution.regions.items():
            if rid not in regions or contribution.priority >= regions[rid][0]:
                regions[rid] = (contribution.priority, region)
    new = {"Regions": {rid: region for rid, (_, region) in sorted(regions.items())}}
    if new != ctx.state.derp_map:
        ctx.state.derp_map = new
        return True
    return False


def _collect_upgrades(ctx: ServerContext, machine: MachineHandler, noise_private: bytes) -> dict[str, ConnectionUpgrade]:
    upgrades: dict[str, ConnectionUpgrade] = {
        "/ts2021": partial(serve_ts2021, private_key=noise_private, handler=machine),  # type: ignore[dict-item]
    }
    for result in ctx.plugins.hook.headscale_connection_upgrades(ctx=ctx):
        for path, handler in (result or {}).items():
            if path in upgrades:
                raise ConfigError(f"two plugins want to take over {path}: block one with plugins.block")
            upgrades[path] = handler
    return upgrades


def _host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _watch_policy(ctx: ServerContext) -> None:
    source = ctx.state.policy.source()
    async for _ in source.watch():
        try:
            text = await source.load()
            ctx.state.policy.apply(text, reload=True)
        except Exception as exc:  # whatever is wrong with the new text, the watcher lives on
            reason = str(exc) if isinstance(exc, InvalidRequest | OSError) else f"{type(exc).__name__}: {exc}"
            log.error("policy reload rejected, keeping the last good policy: %s", reason)
            ctx.state.audit("policy.reload_failed", "system", reason=reason)
            continue
        log.info("policy reloaded from %s", ctx.config.policy.mode)
        ctx.state.audit("policy.reload", "system")
        await ctx.state.emit(PolicyChanged())


async def _refresh_derp_forever(ctx: ServerContext) -> None:
    interval = max(60.0, parse_duration(ctx.config.derp.update_frequency))
    while True:
        await asyncio.sleep(interval)
        if await refresh_derp_map(ctx):
            await ctx.state.emit(DERPMapChanged())


def _api_setup(ctx: ServerContext, app: web.Application) -> web.Application | None:
    """Mount the REST API when the api package provides it; return the local socket app."""
    try:
        from headscale_core.api import make_api_app  # type: ignore[attr-defined]
    except ImportError:
        return None
    app.add_subapp("/api/v1", make_api_app(ctx, trusted_local=False))
    local = web.Application()
    local.add_subapp("/api/v1", make_api_app(ctx, trusted_local=True))
    return local


@web.middleware
async def _remember_source(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Audit events raised while serving a page (a login callback, say) name the client's address."""
    with request_source(request.remote or ""):
        return await handler(request)


@contextlib.asynccontextmanager
async def running_server(ctx: ServerContext) -> AsyncIterator[dict[str, Any]]:
    """Start listeners and background work; yield the bound addresses; stop on exit."""
    config = ctx.config
    metrics: Metrics = ctx.extras["metrics"]
    metrics.node_count.set_function(lambda: len(ctx.state.store.nodes))
    metrics.node_connected.set_function(lambda: len(ctx.state.store.online))
    noise_private = ctx.extras.get("noise_private") or await ctx.keys.load_or_create("noise")
    await refresh_derp_map(ctx)
    if not ctx.state.derp_map["Regions"]:
        log.warning("the DERP map is empty: clients connect but cannot relay; set derp.urls/derp.paths "
                    "or enable derp.server")
    mapper = Mapper(ctx.state, metrics)
    ctx.extras["mapper"] = mapper
    machine = MachineHandler(ctx.state, mapper, ctx.extras["registrar"], metrics)
    upgrades = _collect_upgrades(ctx, machine, noise_private)

    app = web.Application(client_max_size=4 << 20, middlewares=[_remember_source])
    app.add_routes(web_routes(ctx, noise_private))
    # The WebSocket variant of /ts2021 (browsers, js/wasm clients): the listener leaves
    # WebSocket upgrades to aiohttp, which hands them over without losing bytes.
    app.add_routes([web.get("/ts2021", partial(serve_ts2021_websocket, private_key=noise_private,
                                               handler=machine))])
    for routes in ctx.plugins.hook.headscale_routes(ctx=ctx):
        app.add_routes(routes)
    local_app = _api_setup(ctx, app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ssl_context = None
    if config.tls_cert_path:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.tls_cert_path, config.tls_key_path)
    host, port = _host_port(config.listen_addr)
    cleanups: list[Any] = []
    addresses: dict[str, Any] = {}
    try:
        taken_over = TakenOver()
        main_server = await start_listener(runner, host, port, upgrades, taken_over, ssl_context)
        cleanups.append(main_server)
        cleanups.append(taken_over)
        addresses["listen"] = main_server.sockets[0].getsockname()
        if config.metrics_listen_addr:
            metrics_app = web.Application()

            async def metrics_view(request: web.Request) -> web.Response:
                return web.Response(body=generate_latest(ctx.registry), content_type="text/plain")

            metrics_app.add_routes([web.get("/metrics", metrics_view)])
            metrics_runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
            await metrics_runner.setup()
            mhost, mport = _host_port(config.metrics_listen_addr)
            site = web.TCPSite(metrics_runner, mhost, mport)
            await site.start()
            cleanups.append(metrics_runner)
            addresses["metrics"] = metrics_runner.addresses[0] if metrics_runner.addresses else None
        if local_app is not None and config.unix_socket:
            socket_path = config.path(config.unix_socket)
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            local_runner = web.AppRunner(local_app, access_log=None, handle_signals=False)
            await local_runner.setup()
            await web.UnixSite(local_runner, str(socket_path)).start()
            os.chmod(socket_path, int(config.unix_socket_permission, 8))
            cleanups.append(local_runner)
            addresses["unix_socket"] = str(socket_path)
        async with contextlib.AsyncExitStack() as stack:
            for factories in ctx.plugins.hook.headscale_lifespans(ctx=ctx):
                for factory in factories:
                    await stack.enter_async_context(factory())
            tasks = [asyncio.create_task(_watch_policy(ctx))]
            if config.derp.auto_update_enabled and config.derp.urls:
                tasks.append(asyncio.create_task(_refresh_derp_forever(ctx)))
            try:
                yield addresses
            finally:
                for task in tasks:
                    task.cancel()
                await mapper.aclose()
    finally:
        for item in reversed(cleanups):
            if isinstance(item, TakenOver):
                await item.close()
            elif isinstance(item, web.BaseRunner):
                await item.cleanup()
            else:  # a listening server (asyncio's or uvloop's, which is no asyncio.AbstractServer)
                item.close()
        await runner.cleanup()


async def run_server(config: Config, plugins: Plugins | None = None) -> None:
    ctx = await open_core(config, plugins=plugins)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP means "reload the policy"; until the watcher takes it over it must not kill us.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    tuning = config.tuning
    try:
        async with kept_heap(parse_duration(tuning.gc_freeze_interval), parse_duration(tuning.gc_sweep_interval)), \
                running_server(ctx) as addresses:
            log.info("headscale-core listening on %s (server_url %s); data in %s", _fmt(addresses.get("listen")),
                     config.server_url, config.path("."))
            await stop.wait()
            log.info("shutting down")
    finally:
        await close_core(ctx)


def _fmt(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


def plugin_sections(plugins: Plugins) -> Mapping[str, type]:
    sections: dict[str, type] = {}
    for result in plugins.hook.headscale_config_sections():
        for name, cls in (result or {}).items():
            if name in sections:
                raise ConfigError(f"two plugins claim the config section {name!r}: block one with plugins.block")
            sections[name] = cls
    return sections
