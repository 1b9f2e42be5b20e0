"""The plugin manager and a typed facade over ``pm.hook``.

One ``PluginManager`` per app, built by ``make_plugin_manager()``; never at import time. The
built-in defaults are registered through the same path as third-party plugins (entry-point
group ``headscale``), so a plugin can replace any of them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy

from headscale_core import hookspecs
from headscale_core.config import Config, resolve_secrets
from headscale_core.errors import ConfigError

ENTRY_POINT_GROUP = "headscale"

BUILTIN_PLUGINS = (
    "headscale_core.builtin.sqlite_storage",
    "headscale_core.builtin.file_keys",
    "headscale_core.builtin.local_bus",
    "headscale_core.builtin.policy_sources",
    "headscale_core.builtin.derp_sources",
    "headscale_core.builtin.preauth_cli_auth",
    "headscale_core.builtin.maintenance",
    "headscale_core.builtin.audit",
)

T = TypeVar("T")


def make_plugin_manager(
    *,
    block: Iterable[str] = (),
    load_entrypoints: bool = True,
    extra: Iterable[object] = (),
) -> pluggy.PluginManager:
    """Build the plugin manager: hookspecs, built-ins, installed plugins, then ``extra``.

    ``block`` names plugins (entry-point names or built-in module names) not to register.
    Raises ``pluggy.PluginValidationError`` when a plugin implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(block)
    for name in blocked:
        pm.set_blocked(name)
    for modname in BUILTIN_PLUGINS:
        if modname in blocked:
            continue
        pm.register(importlib.import_module(modname), name=modname)
    if load_entrypoints:
        _check_entrypoints(blocked)
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _check_entrypoints(blocked: set[str]) -> None:
    """Import every installed plugin first, so a broken one is named with the fix instead of
    surfacing as a bare ImportError from deep inside pluggy."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked:
            continue
        try:
            ep.load()
        except Exception as exc:
            dist = f" (distribution {ep.dist.name} {ep.dist.version})" if ep.dist else ""
            raise ConfigError(
                f"plugin {ep.name!r}{dist} cannot be loaded: {type(exc).__name__}: {exc}: reinstall or "
                f"uninstall it, or add {ep.name!r} to plugins.block in the config"
            ) from exc


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    hooks: tuple[str, ...]


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Name, version and implemented hooks of every registered plugin (``headscale plugins``)."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if dist is not None:
            version = dist.version
            label = f"{dist.project_name}:{name}"
        else:
            version = _core_version()
            label = name
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(label, version, hooks))
    return sorted(infos, key=lambda i: i.name)


def _core_version() -> str:
    try:
        return importlib.metadata.version("headscale-core")
    except importlib.metadata.PackageNotFoundError:
        from headscale_core import __version__

        return __version__


class Plugins:
    """Typed access to the hooks the core calls."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.hook = pm.hook

    def choose(self, hook_name: str, config_key: str, wanted: str, hint: str) -> Callable[..., Any]:
        """Pick the provider named ``wanted`` from a one-of-N hook, or explain what is installed."""
        merged = merge_named(getattr(self.hook, hook_name)(), hook_name)
        if wanted not in merged:
            installed = ", ".join(sorted(merged)) or "none"
            raise ConfigError(
                f"unknown {config_key} {wanted!r}: is the plugin installed? installed: {installed}"
                + (f" ({hint})" if hint else "")
            )
        return merged[wanted]

    def names(self, hook_name: str) -> list[str]:
        return sorted(merge_named(getattr(self.hook, hook_name)(), hook_name))

    def resolve_secrets(self, config: Config) -> Config:
        """``config`` with every secret reference replaced through ``headscale_resolve_secret``;
        raises ``ConfigError`` naming each key whose reference cannot be resolved."""

        def resolve(reference: str) -> str | None:
            answers = self.hook.headscale_resolve_secret(reference=reference, config=config)
            return answers[0] if answers else None

        return resolve_secrets(config, resolve)

    def emit(self, event: Any) -> None:
        self.hook.headscale_event(event=event)


def merge_named(results: Iterable[Mapping[str, T] | None], hook_name: str) -> dict[str, T]:
    """Merge ``{name: provider}`` results; pluggy lists later-registered plugins first, so a
    third-party plugin registering a name shadows the built-in of the same name."""
    merged: dict[str, T] = {}
    for result in results:
        for name, provider in (result or {}).items():
            merged.setdefault(name, provider)
    return merged
