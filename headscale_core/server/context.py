"""What the running server hands to plugins: config, key store, state, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from headscale_core.config import Config
    from headscale_core.plugins import Plugins
    from headscale_core.providers import KeyStore


@dataclass
class ServerContext:
    """Shared by the core and plugins for the life of one server process.

    ``state`` is the state service (``headscale_core.state.service.StateService``) once storage
    is open; plugins use it to look nodes up (e.g. DERP ``verify_clients``) and must not
    write to storage behind its back.
    """

    config: Config
    plugins: Plugins
    keys: KeyStore
    registry: CollectorRegistry
    state: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
