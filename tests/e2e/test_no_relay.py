"""A node reaches Running even when no relay in the DERP map is reachable (the map must
still list a region, or the client would wait in Starting forever)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headscale_core.testing.inprocess import running
from headscale_core.testing.netns import free_loopback_port
from headscale_core.testing.pytest_plugin import NodeFactory

pytestmark = pytest.mark.e2e


async def test_single_node_runs_with_an_unreachable_relay(tmp_path: Path,
                                                          tailscale_node_factory: NodeFactory) -> None:
    dead = free_loopback_port()  # nothing listens here
    derp_map = tmp_path / "derp.json"
    derp_map.write_text(json.dumps({"Regions": {"950": {"RegionID": 950, "RegionCode": "gone",
                                                        "RegionName": "Unreachable", "Nodes": [
        {"Name": "950a", "RegionID": 950, "HostName": "127.0.0.1", "IPv4": "127.0.0.1", "IPv6": "none",
         "DERPPort": dead, "STUNPort": -1}]}}}))
    port = free_loopback_port()
    async with running(tmp_path / "srv", server_url=f"http://127.0.0.1:{port}", listen_addr=f"127.0.0.1:{port}",
                       derp={"paths": [str(derp_map)], "urls": [], "server": {"enabled": False}}) as srv:
        user = await srv.state.create_user("alone")
        _, key = await srv.state.create_preauth_key(user)
        node = await tailscale_node_factory("alone")
        await node.up(srv.url, auth_key=key, hostname="alone")
        status = await node.wait_running(60)
        assert status["BackendState"] == "Running"
        assert status["Self"]["DNSName"] == "alone.tailnet.test."
