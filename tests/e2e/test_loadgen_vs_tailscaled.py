"""The load generator's simulated nodes see the tailnet exactly as real tailscaled does.

Three simulated nodes and two official clients join one tailnet; every simulated node's peer
table must hold the same peers, with the same node keys and addresses, as
``tailscale status --json`` of a real client (each side minus itself), so the benchmarks'
peer tables are a faithful stand-in for real clients.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.loadgen import Fleet
from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import TailscaleNode, wait_until

pytestmark = pytest.mark.e2e

SIMULATED = 3


def real_view(status: dict[str, Any]) -> dict[str, set[str]]:
    """node key -> addresses (without prefix length) of every peer in a status document."""
    return {p["PublicKey"]: set(p.get("TailscaleIPs") or []) for p in (status.get("Peer") or {}).values()}


def simulated_view(fleet: Fleet, index: int) -> dict[str, set[str]]:
    return {peer.key: {a.split("/")[0] for a in peer.addresses}
            for peer in fleet.nodes[index].table.peers.values()}


async def test_simulated_peer_tables_match_tailscale_status(control: RunningServer,
                                                           tailscale_node_factory: NodeFactory) -> None:
    user = await control.state.create_user("bench")
    _, key = await control.state.create_preauth_key(user, reusable=True)
    fleet = Fleet.generate(control.url, SIMULATED)
    for node in fleet.nodes:
        node.auth_key = key
    async with fleet:
        assert await fleet.gather(fleet.nodes, fleet.join) == []
        real: list[TailscaleNode] = []
        for name in ("real1", "real2"):
            node = await tailscale_node_factory(name)
            await node.up(control.url, auth_key=key, hostname=name)
            real.append(node)
        total = SIMULATED + len(real)

        async def everyone_sees_everyone() -> bool:
            await fleet.settle()
            if any(len(n.table.peers) != total - 1 for n in fleet.nodes):
                return False
            views = [real_view(await r.status()) for r in real]
            return all(len(view) == total - 1 for view in views)

        await wait_until(everyone_sees_everyone, 60, "all five nodes see four peers")
        statuses = [await r.status() for r in real]
        self_keys = [s["Self"]["PublicKey"] for s in statuses]
        self_addrs = [set(s["Self"]["TailscaleIPs"]) for s in statuses]
        for i, node in enumerate(fleet.nodes):
            sim = simulated_view(fleet, i)
            for status, real_key, real_addrs in zip(statuses, self_keys, self_addrs, strict=True):
                seen_by_real = real_view(status)
                # Each side sees the whole tailnet minus itself: swap the two selves to compare.
                assert sim[real_key] == real_addrs
                assert node.table.self_node is not None
                assert seen_by_real[node.node_key] == {a.split("/")[0] for a in (node.table.self_node.Addresses or ())}
                assert {k: v for k, v in sim.items() if k != real_key} == \
                    {k: v for k, v in seen_by_real.items() if k != node.node_key}

