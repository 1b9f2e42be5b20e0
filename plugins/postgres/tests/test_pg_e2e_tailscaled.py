"""Official tailscaled clients on a PostgreSQL-backed server (run with ``scripts/test``: the
throwaway cluster starts inside the same loopback-only network namespace as the clients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from headscale_core.testing.inprocess import loopback_control, running
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import TailscaleNode, wait_until

pytestmark = pytest.mark.e2e


async def peer_names(node: TailscaleNode) -> set[str]:
    status = await node.status()
    return {p["HostName"] for p in (status.get("Peer") or {}).values()}


async def test_tailscaled_nodes_join_and_ping_on_postgres(
        pg_database_config: dict[str, Any], tailscale_node_factory: NodeFactory, tmp_path: Path) -> None:
    async with running(tmp_path / "control", **loopback_control(database=pg_database_config)) as control:
        user = await control.state.create_user("alice")
        _, key = await control.state.create_preauth_key(user, reusable=True)
        nodes = []
        for name in ("pg1", "pg2"):
            node = await tailscale_node_factory(name)
            await node.up(control.url, auth_key=key, hostname=name)
            nodes.append(node)
        for node in nodes:
            status = await node.wait_running(30)
            assert status["Self"]["DNSName"] == f"{node.name}.tailnet.test."
        await wait_until(lambda: _sees(nodes[0], "pg2"), 20, "pg1 sees pg2")
        out = await nodes[0].ping(await nodes[1].ip(), timeout=15)
        assert "pong" in out
        stored = {n.given_name: n.ipv4 for n in control.state.nodes()}
        assert stored == {"pg1": await nodes[0].ip(), "pg2": await nodes[1].ip()}


async def test_nodes_homed_on_two_instances_see_each_other(
        pg_database_config: dict[str, Any], tailscale_node_factory: NodeFactory, tmp_path: Path) -> None:
    async with running(tmp_path / "a", **loopback_control(database=pg_database_config)) as a, \
            running(tmp_path / "b", **loopback_control(database=pg_database_config)) as b:
        user = await a.state.create_user("alice")
        _, key = await a.state.create_preauth_key(user, reusable=True)
        on_a = await tailscale_node_factory("on-a")
        await on_a.up(a.url, auth_key=key, hostname="on-a")
        on_b = await tailscale_node_factory("on-b")
        await on_b.up(b.url, auth_key=key, hostname="on-b")
        await wait_until(lambda: _sees(on_a, "on-b"), 20, "the node on A sees the node that joined through B")
        await wait_until(lambda: _sees(on_b, "on-a"), 20, "the node on B sees the node on A")
        assert "pong" in await on_a.ping(await on_b.ip(), timeout=20)


async def _sees(node: TailscaleNode, name: str) -> bool:
    return name in await peer_names(node)
