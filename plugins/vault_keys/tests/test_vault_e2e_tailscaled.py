"""A real tailscaled stays logged in across a restart of a server whose keys live only in Vault.

The client pins the server's Noise key at login. If the restarted server came back with
another key, the client could not re-handshake and would need a new login; here it simply
reconnects, with the same node key, and no key file ever reaches the data directory. The
server runs as ``headscale serve`` in a subprocess, so the restart drops every connection as
a real one does. Runs only in a loopback-only network namespace (``scripts/test``).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from headscale_vault_keys.store import vault_key_store
from headscale_vault_keys.testing import DevVault

from headscale_core.config import load_config
from headscale_core.plugins import Plugins, make_plugin_manager
from headscale_core.server.app import close_core, open_core, plugin_sections
from headscale_core.testing.inprocess import loopback_control
from headscale_core.testing.serverproc import ServerProcess
from headscale_core.testing.tailscale import wait_until

if TYPE_CHECKING:  # importing it at run time would defeat pytest's assertion rewriting of the plugin
    from headscale_core.testing.pytest_plugin import NodeFactory, ServerFactory

pytestmark = pytest.mark.e2e


async def preauth_key(server: ServerProcess) -> str:
    """A user and a one-off pre-auth key, made through the core on the server's own database."""
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.config_path.write_text(yaml.safe_dump(server.config))
    plugins = Plugins(make_plugin_manager())
    config = load_config(str(server.config_path), env={}, plugin_sections=plugin_sections(plugins))
    ctx = await open_core(config, plugins=plugins)
    try:
        user = await ctx.state.create_user("vault")
        _, key = await ctx.state.create_preauth_key(user, reusable=False)
    finally:
        await close_core(ctx)
    return str(key)


def connected_nodes(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("headscale_node_connected "):
                return float(line.split()[1])
    return 0.0


async def test_client_reconnects_after_a_restart_with_keys_only_in_vault(
    tmp_path: Path, vault: DevVault, tailscale_node_factory: NodeFactory, headscale_server_factory: ServerFactory
) -> None:
    server = headscale_server_factory(loopback_control(keys={"store": "vault"}, vault=vault.section()), start=False)
    auth_key = await preauth_key(server)
    server.start()
    node = await tailscale_node_factory("v1")
    await node.up(server.url, auth_key=auth_key, hostname="v1")
    before = await node.wait_running(30)
    logins_before = node.log_tail(100_000).count("-> NeedsLogin")

    server.restart()

    async def reconnected() -> bool:
        return connected_nodes(server) == 1

    await wait_until(reconnected, 90, "the node's map stream to the restarted server")
    after = await node.wait_running(30)
    assert after["Self"]["PublicKey"] == before["Self"]["PublicKey"]
    assert not after.get("AuthURL")
    assert node.log_tail(100_000).count("-> NeedsLogin") == logins_before  # never asked to log in again

    store = vault_key_store(load_config(str(server.config_path), env={},
                                        plugin_sections=plugin_sections(Plugins(make_plugin_manager()))))
    keys = [await store.load_or_create("noise"), await store.load_or_create("derp")]
    for path in server.workdir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for key in keys:
                assert key.hex().encode() not in content and key not in content, f"{path} holds a private key"
    assert not (server.workdir / "noise.key").exists()
    assert not (server.workdir / "derp_server_private.key").exists()
