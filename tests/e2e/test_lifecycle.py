"""Registration flows and administrative changes, seen through official clients."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import TailscaleNode

pytestmark = pytest.mark.e2e


def peer_named(status: dict[str, Any], hostname: str) -> dict[str, Any] | None:
    for peer in (status.get("Peer") or {}).values():
        if peer.get("HostName") == hostname:
            return peer
    return None


async def two_nodes(control: RunningServer, factory: NodeFactory, **key_kw: Any) -> tuple[TailscaleNode, ...]:
    user = await control.state.create_user("alice")
    _, key = await control.state.create_preauth_key(user, reusable=True, **key_kw)
    nodes = []
    for name in ("watcher", "subject"):
        node = await factory(name)
        await node.up(control.url, auth_key=key, hostname=name)
        nodes.append(node)
    await nodes[0].wait_for(lambda s: peer_named(s, "subject") is not None, 20, "watcher sees subject")
    return tuple(nodes)


async def test_interactive_login_is_approved_by_an_administrator(control: RunningServer,
                                                                 tailscale_node_factory: NodeFactory) -> None:
    user = await control.state.create_user("bob")
    node = await tailscale_node_factory("interactive")
    proc = await node.up_nowait(control.url, hostname="interactive", timeout=60)
    url = await node.read_login_url(proc, timeout=30)
    assert url.startswith(control.url + "/register/")
    reg_id = url.rsplit("/", 1)[1]
    # the page tells the administrator what to run
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url) as page:
        assert page.status == 200
        assert f"--key {reg_id}" in await page.text()
    await control.ctx.extras["registrar"].approve(reg_id, user)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    status = await node.wait_running(30)
    assert status["Self"]["DNSName"] == "interactive.tailnet.test."


async def test_admin_changes_reach_peers_within_seconds(control: RunningServer,
                                                        tailscale_node_factory: NodeFactory) -> None:
    watcher, subject = await two_nodes(control, tailscale_node_factory)
    state = control.state
    node = next(n for n in state.nodes() if n.given_name == "subject")

    await state.rename_node(node, "renamed")
    await watcher.wait_for(lambda s: (peer_named(s, "subject") or {}).get("DNSName") == "renamed.tailnet.test.",
                           5, "rename visible")

    await state.set_tags(state.node(node.id), ["tag:server"])
    await watcher.wait_for(lambda s: (peer_named(s, "subject") or {}).get("Tags") == ["tag:server"], 5,
                           "tag visible")

    await subject.cli("set", "--advertise-routes=10.20.0.0/24")
    await asyncio.sleep(0.5)
    await state.approve_routes(state.node(node.id), ["10.20.0.0/24"])
    await watcher.wait_for(
        lambda s: "10.20.0.0/24" in ((peer_named(s, "subject") or {}).get("PrimaryRoutes") or []), 5,
        "approved route visible")

    await state.expire_node(state.node(node.id))
    await subject.wait_for(lambda s: s["BackendState"] == "NeedsLogin", 10, "expired node must log in again")

    await state.delete_node(state.node(node.id))
    await watcher.wait_for(lambda s: peer_named(s, "subject") is None, 5, "deleted node gone")


async def test_ephemeral_node_disappears_after_logout_and_after_inactivity(
        control: RunningServer, tailscale_node_factory: NodeFactory) -> None:
    # a short inactivity timeout for the test (config validation keeps operators above 65 s)
    config = control.ctx.config
    control.state.config = dataclasses.replace(config, root=dataclasses.replace(
        config.root, node=dataclasses.replace(config.root.node, ephemeral=dataclasses.replace(
            config.root.node.ephemeral, inactivity_timeout="2s"))))
    watcher, subject = await two_nodes(control, tailscale_node_factory, ephemeral=True)
    await subject.logout()
    await watcher.wait_for(lambda s: peer_named(s, "subject") is None, 10, "logged-out ephemeral node removed")
    assert all(n.given_name != "subject" for n in control.state.nodes())

    # inactivity: a third ephemeral node whose daemon dies is collected after the timeout
    user = control.state.user("alice")
    _, key = await control.state.create_preauth_key(user, ephemeral=True)
    late = await tailscale_node_factory("late")
    await late.up(control.url, auth_key=key, hostname="late")
    await watcher.wait_for(lambda s: peer_named(s, "late") is not None, 10, "late node visible")
    late.kill()
    await watcher.wait_for(lambda s: peer_named(s, "late") is None, 20, "inactive ephemeral node collected")
