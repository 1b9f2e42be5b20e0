"""An in-process server for tests and the load generator: real listeners on loopback,
real storage in a temp directory, driven through the same code paths as ``headscale serve``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from headscale_core.config import Config, load_config
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.app import close_core, open_core, plugin_sections, running_server
from headscale_core.server.context import ServerContext


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def test_config(data_dir: Path, **overrides: Any) -> Config:
    """A loopback config with port 0 listeners, no metrics port and no outside DERP map."""
    raw: dict[str, Any] = {
        "server_url": "http://127.0.0.1:0",
        "listen_addr": "127.0.0.1:0",
        "metrics_listen_addr": "",
        "data_dir": str(data_dir),
        "derp": {"urls": [], "paths": [], "server": {"enabled": False}},
        "dns": {"magic_dns": True, "base_domain": "tailnet.test", "override_local_dns": False},
        "unix_socket": "headscale.sock",
        "tuning": {"batch_change_delay": "5ms"},
    }
    raw = merge(raw, overrides)
    path = data_dir / "config.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    plugins = Plugins(make_plugin_manager())
    return plugins.resolve_secrets(load_config(str(path), env={}, plugin_sections=plugin_sections(plugins)))


def loopback_control(**extra: Any) -> dict[str, Any]:
    """Overrides for a server real clients can use: fixed loopback ports for the listener,
    the built-in DERP relay and STUN (the DERP region needs the real port up front)."""
    from headscale_core.testing.netns import free_loopback_port

    port, stun = free_loopback_port(), free_loopback_port()
    overrides: dict[str, Any] = {
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "derp": {"urls": [], "paths": [], "server": {
            "enabled": True, "stun_listen_addr": f"127.0.0.1:{stun}", "verify_clients": True,
            "ipv4": "127.0.0.1", "region_id": 901, "region_code": "test", "region_name": "Test relay"}},
    }
    return merge(overrides, extra)


@dataclass
class RunningServer:
    ctx: ServerContext
    url: str
    addresses: dict[str, Any]

    @property
    def state(self) -> Any:
        return self.ctx.state


@contextlib.asynccontextmanager
async def running(data_dir: Path, *, extra_plugins: Sequence[object] = (),
                  **overrides: Any) -> AsyncIterator[RunningServer]:
    """A server on loopback; ``extra_plugins`` are registered like installed plugins."""
    config = test_config(data_dir, **overrides)
    plugins = Plugins(make_plugin_manager(extra=extra_plugins)) if extra_plugins else None
    ctx = await open_core(config, plugins=plugins)
    try:
        async with running_server(ctx) as addresses:
            host, port = addresses["listen"][:2]
            url = f"http://{host}:{port}"
            if config.server_url.endswith(":0"):
                # server_url must point at the real port for AuthURLs; the config is frozen,
                # so rebuild it once the port is known.
                import dataclasses

                ctx.config = dataclasses.replace(config, root=dataclasses.replace(config.root, server_url=url))
                ctx.state.config = ctx.config
            yield RunningServer(ctx=ctx, url=url, addresses=addresses)
    finally:
        await close_core(ctx)
