"""The headscale-core plugin: the ``vault`` config section, the ``vault`` key store, secret
references and the ``headscale keys`` commands.

hvac and requests (about 18 MB) are imported only when Vault is used.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from headscale_core.config import Config
from headscale_core.hookspecs import hookimpl
from headscale_core.providers import KeyStore
from headscale_vault_keys.cli import register_keys_commands
from headscale_vault_keys.settings import SCHEME, VaultSection, settings_from


def vault_key_store(config: Config) -> KeyStore:
    from headscale_vault_keys.store import vault_key_store as make

    return make(config)


@hookimpl
def headscale_config_sections() -> Mapping[str, type]:
    return {"vault": VaultSection}


@hookimpl
def headscale_key_stores() -> Mapping[str, Callable[[Config], KeyStore]]:
    return {"vault": vault_key_store}


@hookimpl
def headscale_resolve_secret(reference: str, config: Config) -> str | None:
    if not reference.startswith(SCHEME):
        return None
    from headscale_vault_keys.secrets import parse_reference, resolve_reference

    parsed = parse_reference(reference)
    if parsed is None:
        return None
    return resolve_reference(parsed, settings_from(config))


@hookimpl
def headscale_cli_commands(subparsers: argparse._SubParsersAction, plugin_manager: Any) -> None:  # type: ignore[type-arg]
    register_keys_commands(subparsers)
