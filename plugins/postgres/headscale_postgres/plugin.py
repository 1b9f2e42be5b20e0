"""The headscale-core plugin: the ``postgres`` storage backend, the ``postgres`` change bus
(LISTEN/NOTIFY, run by a lifespan) and ``headscale db migrate``.

Installed is not configured: asyncpg and the backend are imported only when a server uses them
(about 15 MB of every SQLite server's memory otherwise).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from headscale_core.config import Config
from headscale_core.errors import ConfigError
from headscale_core.hookspecs import hookimpl
from headscale_core.providers import ChangeBus
from headscale_core.storage.backend import StorageBackend

if TYPE_CHECKING:
    from headscale_postgres.bus import PostgresChangeBus


def postgres_backend(config: Config) -> StorageBackend:
    from headscale_postgres.backend import PostgresBackend
    from headscale_postgres.settings import settings_from

    return PostgresBackend(settings_from(config), echo=config.database.debug)


@hookimpl
def headscale_storage_backends() -> Mapping[str, Callable[[Config], StorageBackend]]:
    return {"postgres": postgres_backend}


def postgres_bus(ctx: Any) -> PostgresChangeBus:
    from headscale_postgres.backend import PostgresBackend
    from headscale_postgres.bus import PostgresChangeBus

    backend = ctx.state.storage
    if not isinstance(backend, PostgresBackend):
        raise ConfigError(f"the postgres change bus needs database.type postgres, not {ctx.config.database.type!r}")
    return PostgresChangeBus(backend)


@hookimpl
def headscale_change_buses() -> Mapping[str, Callable[[Any], ChangeBus]]:
    return {"postgres": postgres_bus}


@hookimpl
def headscale_lifespans(ctx: Any) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    bus = ctx.extras.get("change_bus")
    module = sys.modules.get("headscale_postgres.bus")  # not loaded: no postgres bus is in use
    return [bus.running] if module is not None and isinstance(bus, module.PostgresChangeBus) else []


@hookimpl
def headscale_cli_commands(subparsers: argparse._SubParsersAction, plugin_manager: Any) -> None:  # type: ignore[type-arg]
    """``headscale db migrate``, added to the core's ``db`` group."""
    from headscale_postgres.cli import add_db_migrate

    add_db_migrate(subparsers)
