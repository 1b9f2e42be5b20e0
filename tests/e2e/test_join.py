"""Official tailscaled clients join our server, see each other by MagicDNS name and talk."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headscale_core.mapper import fullmap
from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import OLD_VERSION, TailscaleNode, wait_until

pytestmark = pytest.mark.e2e


async def serve_echo(host: str = "127.0.0.1") -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(1024)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, host, 0)
    return server, server.sockets[0].getsockname()[1]


async def join(control: RunningServer, factory: NodeFactory, names: list[str], **kw: Any) -> list[TailscaleNode]:
    user = await control.state.create_user("alice")
    _, key = await control.state.create_preauth_key(user, reusable=True)
    nodes = []
    for name in names:
        node = await factory(name, **kw.get(name, {}))
        await node.up(control.url, auth_key=key, hostname=name)
        nodes.append(node)
    return nodes


async def peers_of(node: TailscaleNode) -> dict[str, dict[str, Any]]:
    status = await node.status()
    return {p["HostName"]: p for p in (status.get("Peer") or {}).values()}


async def test_full_maps_of_several_zstd_frames_decode_in_tailscaled(
        control: RunningServer, tailscale_node_factory: NodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every peer in a run of its own: each full map with peers is three frames or more; the
    # oldest supported client reads them too.
    monkeypatch.setattr(fullmap, "RUN_SPAN", 1)
    monkeypatch.setattr(fullmap, "MIN_RUN_PEERS", 1)
    nodes = await join(control, tailscale_node_factory, ["f1", "f2", "f3"], f1={"version": OLD_VERSION})
    for node in nodes:
        await node.wait_running(30)
        await wait_until(lambda node=node: _has_peers(node, 2), 20, f"{node.name} sees two peers")
        peers = await peers_of(node)
        assert sorted(peers) == sorted(n.name for n in nodes if n is not node)
    assert control.ctx.extras["mapper"].full_maps.misses >= 3


async def test_three_nodes_join_see_each_other_ping_and_carry_tcp(control: RunningServer,
                                                                  tailscale_node_factory: NodeFactory) -> None:
    nodes = await join(control, tailscale_node_factory, ["n1", "n2", "n3"])
    for node in nodes:
        status = await node.wait_running(30)
        assert status["BackendState"] == "Running"
        assert status["Self"]["DNSName"] == f"{node.name}.tailnet.test."
        await wait_until(lambda node=node: _has_peers(node, 2), 20, f"{node.name} sees two peers")
        peers = await peers_of(node)
        assert sorted(p["DNSName"] for p in peers.values()) == sorted(
            f"{n.name}.tailnet.test." for n in nodes if n is not node)
    ips = {n.name: await n.ip() for n in nodes}
    for a in nodes:
        for b in nodes:
            if a is not b:
                out = await a.ping(ips[b.name], timeout=15)
                assert "pong" in out
    # TCP through n1's SOCKS5 proxy to n3's tailnet address; n3's userspace netstack hands
    # inbound connections to its own loopback, where the listener is.
    server, port = await serve_echo()
    try:
        reader, writer = await nodes[0].dial(ips["n3"], port)
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 10) == b"echo:hello"
        writer.close()
    finally:
        server.close()


async def _has_peers(node: TailscaleNode, count: int) -> bool:
    return len(await peers_of(node)) >= count


async def test_old_client_in_same_tailnet(control: RunningServer, tailscale_node_factory: NodeFactory) -> None:
    nodes = await join(control, tailscale_node_factory, ["new", "old"], old={"version": OLD_VERSION})
    for node in nodes:
        await node.wait_running(30)
    await wait_until(lambda: _has_peers(nodes[1], 1), 20, "old client sees the new one")
    assert "pong" in await nodes[1].ping(await nodes[0].ip(), timeout=15)
    assert "pong" in await nodes[0].ping(await nodes[1].ip(), timeout=15)
