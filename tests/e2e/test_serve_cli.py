"""`headscale serve` as a user runs it, driven by the `headscale` CLI: changes made with the
CLI reach connected peers, and a `kill -9` of the server loses nothing — clients come back
to Running on their own, without a new login."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from headscale_core.testing.netns import free_loopback_port
from headscale_core.testing.pytest_plugin import NodeFactory, ServerFactory
from headscale_core.testing.serverproc import ServerProcess
from headscale_core.testing.tailscale import TailscaleNode

pytestmark = pytest.mark.e2e


def relay_overrides() -> dict[str, Any]:
    return {"derp": {"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{free_loopback_port()}",
                                "ipv4": "127.0.0.1"}}}


def peer(status: dict[str, Any], hostname: str) -> dict[str, Any] | None:
    return next((p for p in (status.get("Peer") or {}).values() if p.get("HostName") == hostname), None)


def nodes_json(server: ServerProcess) -> list[dict[str, Any]]:
    return json.loads(server.cli("nodes", "list", "-o", "json").stdout)


async def start_tailnet(server: ServerProcess, factory: NodeFactory, names: list[str]) -> list[TailscaleNode]:
    server.cli("users", "create", "alice")
    key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-e", "1h").stdout.strip()
    assert key.startswith("hskey-auth-"), key
    nodes = []
    for name in names:
        node = await factory(name)
        await node.up(server.url, auth_key=key, hostname=name)
        nodes.append(node)
    for node in nodes:
        await node.wait_for(lambda s: len(s.get("Peer") or {}) == len(names) - 1, 20, "all peers visible")
    return nodes


async def test_cli_changes_reach_connected_peers(headscale_server_factory: ServerFactory,
                                                 tailscale_node_factory: NodeFactory) -> None:
    server = headscale_server_factory(relay_overrides())
    watcher, subject = await start_tailnet(server, tailscale_node_factory, ["watcher", "subject"])
    subject_id = next(n["id"] for n in nodes_json(server) if n["givenName"] == "subject")

    server.cli("nodes", "rename", "-i", subject_id, "renamed")
    await watcher.wait_for(lambda s: (peer(s, "subject") or {}).get("DNSName") == "renamed.tailnet.test.", 5,
                           "rename via CLI")
    server.cli("nodes", "tag", "-i", subject_id, "-t", "tag:web")
    await watcher.wait_for(lambda s: (peer(s, "subject") or {}).get("Tags") == ["tag:web"], 5, "tag via CLI")
    await subject.cli("set", "--advertise-routes=10.30.0.0/24")
    await watcher.wait_for(lambda s: True, 1)
    server.cli("nodes", "approve-routes", "-i", subject_id, "-r", "10.30.0.0/24")
    await watcher.wait_for(lambda s: "10.30.0.0/24" in ((peer(s, "subject") or {}).get("PrimaryRoutes") or []),
                           5, "route approval via CLI")
    server.cli("--force", "nodes", "expire", "-i", subject_id)
    await subject.wait_for(lambda s: s["BackendState"] == "NeedsLogin", 10, "expiry via CLI")
    server.cli("--force", "nodes", "delete", "-i", subject_id)
    await watcher.wait_for(lambda s: peer(s, "subject") is None, 5, "deletion via CLI")


async def test_kill9_and_restart_lose_nothing(headscale_server_factory: ServerFactory,
                                              tailscale_node_factory: NodeFactory) -> None:
    server = headscale_server_factory(relay_overrides())
    a, b = await start_tailnet(server, tailscale_node_factory, ["a", "b"])
    before = {n["id"]: (n["givenName"], n["ipAddresses"], n["nodeKey"], n["machineKey"]) for n in nodes_json(server)}
    keys_before = json.loads(server.cli("preauthkeys", "list", "-o", "json").stdout)

    server.kill9()
    server.start()

    for node in (a, b):
        await node.wait_for(lambda s: s["BackendState"] == "Running" and len(s.get("Peer") or {}) == 1, 60,
                            "back to Running on its own")
    after = {n["id"]: (n["givenName"], n["ipAddresses"], n["nodeKey"], n["machineKey"]) for n in nodes_json(server)}
    assert after == before
    assert json.loads(server.cli("preauthkeys", "list", "-o", "json").stdout) == keys_before
    assert "pong" in await a.ping(await b.ip(), timeout=20)
    # no new login was needed: the node keys did not change
    assert {v[2] for v in after.values()} == {v[2] for v in before.values()}


async def test_interactive_login_approved_with_nodes_register(headscale_server_factory: ServerFactory,
                                                             tailscale_node_factory: NodeFactory) -> None:
    server = headscale_server_factory(relay_overrides())
    server.cli("users", "create", "carol")
    node = await tailscale_node_factory("laptop")
    proc = await node.up_nowait(server.url, hostname="laptop", timeout=60)
    url = await node.read_login_url(proc, timeout=30)
    assert url.startswith(server.url + "/register/")
    server.cli("nodes", "register", "--user", "carol", "--key", url.rsplit("/", 1)[1])
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    status = await node.wait_running(30)
    assert status["Self"]["DNSName"] == "laptop.tailnet.test."
    assert [n["user"]["name"] for n in nodes_json(server)] == ["carol"]
