"""Real tailscaled clients relaying through our DERP, embedded in the in-process server.

With ``TS_DEBUG_ALWAYS_USE_DERP=1`` every disco and WireGuard packet goes through the relay,
so a ping and a TCP exchange between two nodes only work if our relay carries them. Runs only
in a loopback-only network namespace (``scripts/test``, or ``unshare -n``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from headscale_derp import plugin

if TYPE_CHECKING:  # importing it at run time would defeat pytest's assertion rewriting of the plugin
    from headscale_core.testing.pytest_plugin import NodeFactory

from headscale_core.testing.inprocess import running
from headscale_core.testing.netns import free_loopback_port

pytestmark = pytest.mark.e2e


async def test_two_tailscaled_nodes_talk_only_through_our_relay(
    tmp_path: Path, tailscale_node_factory: NodeFactory
) -> None:
    port, stun_port = free_loopback_port(), free_loopback_port()
    overrides = {
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "derp": {"urls": [], "paths": [], "server": {
            "enabled": True, "stun_listen_addr": f"127.0.0.1:{stun_port}", "verify_clients": True,
            "ipv4": "127.0.0.1", "region_id": 902, "region_code": "py", "region_name": "Python relay"}},
    }  # fmt: skip
    async with running(tmp_path / "control", **overrides) as control:
        user = await control.state.create_user("derp")
        _, auth_key = await control.state.create_preauth_key(user, reusable=True)
        env = {"TS_DEBUG_ALWAYS_USE_DERP": "1"}
        one = await tailscale_node_factory("d1", env=env)
        two = await tailscale_node_factory("d2", env=env)
        for node in (one, two):
            await node.up(control.url, auth_key=auth_key, hostname=node.name)
            await node.wait_running(30)
        relay = plugin.service(control.ctx).relay
        assert relay is not None
        out = await one.ping(await two.ip(), timeout=15, count=5, extra_args=("--until-direct=false",))
        assert "via DERP(py)" in out
        server, echo_port = await _echo_server()
        try:
            reader, writer = await one.dial(await two.ip(), echo_port)
            payload = bytes(range(256)) * 4096  # 1 MiB through WireGuard inside DERP

            async def send() -> None:
                writer.write(payload)
                await writer.drain()

            sending = asyncio.create_task(send())
            received = await asyncio.wait_for(reader.readexactly(len(payload)), 60)
            await sending
            writer.close()
            assert received == payload
        finally:
            server.close()
        registry = control.ctx.registry
        assert registry.get_sample_value("derp_bytes_sent_total") > len(payload)
        assert registry.get_sample_value("derp_rejected_clients_total") == 0
        assert relay.gauges().current_home_connections == 2


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
