"""Every plugin hook of headscale-core.

Hooks are synchronous. Where a hook hands the core something that does I/O, it returns a
class or an object whose methods are ``async``; the core awaits them. No hook here uses
``firstresult`` together with coroutines. A one-of-N choice (storage, key store, policy
source, change bus) is a hook that returns named providers; the configuration picks one by
name. The hook reference in ``docs/plugins.md`` is generated from this file
(``python -m headscale_core.docs``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from headscale_core.config import Config
    from headscale_core.events import Event
    from headscale_core.providers import (
        AuthProvider,
        ChangeBus,
        ConnectionUpgrade,
        Deny,
        DERPMapProvider,
        Identity,
        KeyStore,
        PolicySource,
    )
    from headscale_core.server.context import ServerContext
    from headscale_core.state.registrations import PendingRegistration
    from headscale_core.storage.backend import StorageBackend

PROJECT = "headscale"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def headscale_config_sections() -> Mapping[str, type]:
    """Declare configuration sections owned by a plugin.

    Returns a mapping of top-level config key (``"oidc"``, ``"ldap"``) to a frozen dataclass.
    The core validates the section from ``config.yaml`` and ``HEADSCALE_<SECTION>_<KEY>``
    variables into that dataclass and reports problems with their key path.
    Calling semantics: all results collected; two plugins claiming one key is a start-up error.
    """


@hookspec
def headscale_resolve_secret(reference: str, config: Config) -> str | None:
    """Resolve a secret reference written as a config value (``vault:secret/headscale#db``).

    Called at start-up for every text value of the configuration (Headscale's keys and plugin
    sections) after ``${VAR}`` expansion, so a secret need not sit in the file. ``config`` is
    the configuration as written, references unresolved (the plugin reads its own connection
    settings from it). Return the secret, or None when ``reference`` is not of a form the
    plugin owns; raise ``ConfigError`` with the reason when it is, but cannot be resolved.
    Calling semantics: all called; the first non-None answer replaces the value, no answer
    leaves the value as written; every ``ConfigError`` is reported with its key path and
    start-up fails.
    """


@hookspec
def headscale_storage_backends() -> Mapping[str, Callable[[Config], StorageBackend]]:
    """Offer storage backends by name, selected with ``database.type``.

    Returns ``{name: factory}``; the factory takes the validated config and returns an
    unopened ``StorageBackend``. Calling semantics: all results merged; the configured name
    must be among them, else start-up fails with the list of installed backends.
    """


@hookspec
def headscale_change_buses() -> Mapping[str, Callable[[ServerContext], ChangeBus]]:
    """Offer change buses that carry committed changes between server instances.

    Returns ``{name: factory}``. The built-in ``local`` bus only serves one process; the
    postgres plugin offers one that uses LISTEN/NOTIFY. Calling semantics: all merged; the
    storage backend's preferred bus is used unless ``database.change_bus`` names another.
    """


@hookspec
def headscale_key_stores() -> Mapping[str, Callable[[Config], KeyStore]]:
    """Offer custody for the server's private keys, selected with ``keys.store``.

    Returns ``{name: factory}``; the built-in ``file`` store keeps 0600 key files at the
    configured paths. Calling semantics: all merged; the configured name must exist.
    """


@hookspec
def headscale_auth_providers(ctx: ServerContext) -> list[AuthProvider]:
    """Offer interactive login methods for the ``/register/<id>`` page.

    Returns a list of providers (each with ``name``, ``title`` and ``login_url``). Calling
    semantics: all collected, shown in registration order.
    """


@hookspec
def headscale_authorize_login(
    identity: Identity, registration: PendingRegistration, ctx: ServerContext
) -> Deny | None:
    """Veto a login before a node is registered to ``identity``.

    ``ctx`` gives the plugin its config section (``ctx.config.<section>``) and the state, so
    a veto works the same in ``serve`` and in the CLI's offline mode; an implementation may
    omit the argument. Return ``Deny(reason)`` to refuse, or None to have no opinion.
    Calling semantics: every implementation is called; any ``Deny`` refuses the login, and
    the first reason is shown. Must not block: no I/O here.
    """


@hookspec
def headscale_policy_sources() -> Mapping[str, Callable[[ServerContext], PolicySource]]:
    """Offer policy sources, selected with ``policy.mode`` (built-in: ``file``, ``database``).

    Returns ``{name: factory}``. Calling semantics: all merged; the configured name must exist.
    """


@hookspec
def headscale_derp_map_providers(ctx: ServerContext) -> list[DERPMapProvider]:
    """Contribute regions to the DERP map served to clients.

    Returns providers whose ``fetch()`` results are merged (higher priority wins a region-ID
    clash). The built-in provider reads ``derp.urls`` and ``derp.paths``. Calling semantics:
    all collected; refreshed every ``derp.update_frequency``.
    """


@hookspec
def headscale_connection_upgrades(ctx: ServerContext) -> Mapping[str, ConnectionUpgrade]:
    """Take over raw connections for HTTP/1.1 upgrade requests to given paths.

    Returns ``{path: handler}`` (e.g. ``{"/derp": relay.accept}``). The main listener parses
    the request head itself and gives the handler the stream with every byte that followed
    the head, so nothing a client sends early is lost. Calling semantics: all merged; a path
    claimed twice is a start-up error.
    """


@hookspec
def headscale_routes(ctx: ServerContext) -> list[web.RouteDef]:
    """Add aiohttp routes to the main listener (login callbacks, forms, probes).

    Returns a list of ``aiohttp.web.RouteDef``. Calling semantics: all collected.
    """


@hookspec
def headscale_lifespans(ctx: ServerContext) -> list[Callable[[], AbstractAsyncContextManager[None]]]:
    """Run background work for the life of the server (GC, STUN listener, LDAP sync…).

    Returns factories of async context managers: entered in order at start-up after storage
    is open, exited in reverse at shutdown. Calling semantics: all collected.
    """


@hookspec
def headscale_cli_commands(subparsers: argparse._SubParsersAction, plugin_manager: Any) -> None:  # type: ignore[type-arg]
    """Add subcommands to the ``headscale`` command line.

    Called with argparse's subparsers object; add parsers and set ``func`` on them with
    ``parser.set_defaults(func=callable(args) -> int)``. Calling semantics: all called.
    """


@hookspec
def headscale_event(event: Event) -> None:
    """Observe an administrative or security-relevant event (audit log, webhooks).

    Called after the change is committed; must not block or raise. Calling semantics: all
    called, results ignored.
    """
