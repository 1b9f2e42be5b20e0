"""``/metrics`` on ``metrics_listen_addr`` after official clients join: the series that
docs/metrics.md and the Grafana dashboard use exist and agree with what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from headscale_core.testing.inprocess import RunningServer, loopback_control, running
from headscale_core.testing.pytest_plugin import NodeFactory
from headscale_core.testing.tailscale import wait_until

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest_asyncio.fixture
async def observed(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running(tmp_path / "control", **loopback_control(metrics_listen_addr="127.0.0.1:0")) as srv:
        yield srv


async def scrape(server: RunningServer) -> Samples:
    host, port = server.addresses["metrics"][:2]
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value (0 when absent), or the sum over label values not named."""
    return sum(v for (n, have), v in samples.items()
               if n == name and all(dict(have).get(k) == want for k, want in labels.items()))


async def test_metrics_after_real_clients_join(observed: RunningServer,
                                               tailscale_node_factory: NodeFactory) -> None:
    state = observed.state
    user = await state.create_user("alice")
    _, key = await state.create_preauth_key(user, reusable=True)
    nodes = []
    for name in ("m1", "m2"):
        node = await tailscale_node_factory(name)
        await node.up(observed.url, auth_key=key, hostname=name)
        await node.wait_running(30)
        nodes.append(node)
    for node in nodes:
        await node.wait_for(lambda s: len(s.get("Peer") or {}) == 1, 20, "one peer")
    _, api_key = await state.create_api_key(actor="test")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
        for path in ("/node", "/node", "/user", "/node/999"):
            async with session.get(f"{observed.url}/api/v1{path}") as response:
                assert response.status == (404 if path == "/node/999" else 200)
    # A rename reaches the peer as a changed node: a delta through the batcher.
    m2 = next(n for n in state.nodes() if n.given_name == "m2")
    await state.rename_node(m2, "renamed")
    await nodes[0].wait_for(lambda s: any(p["HostName"] == "m2" and p["DNSName"].startswith("renamed.")
                                          for p in (s.get("Peer") or {}).values()), 10, "the rename")

    samples = await scrape(observed)
    assert value(samples, "headscale_node_count") == 2
    assert value(samples, "headscale_node_connected") == 2
    assert value(samples, "headscale_map_streams") >= 2
    assert value(samples, "headscale_registrations_total", method="authkey", result="ok") == 2
    assert value(samples, "headscale_api_requests_total", method="GET", path="/api/v1/node", status="200") == 2
    assert value(samples, "headscale_api_requests_total", path="/api/v1/node/{nodeId}", status="404") == 1
    assert value(samples, "headscale_api_request_duration_seconds_count", path="/api/v1/user") == 1
    assert value(samples, "headscale_api_request_duration_seconds_sum") > 0
    assert value(samples, "headscale_db_query_duration_seconds_count") > 10
    assert 0 < value(samples, "headscale_db_query_duration_seconds_sum") < 60
    assert value(samples, "headscale_map_messages_total", kind="full") >= 2
    assert value(samples, "headscale_map_messages_total", kind="delta") >= 2  # each saw the other join; the rename
    for kind in ("full", "delta"):
        assert value(samples, "headscale_map_bytes_total", kind=kind) > 50 * value(
            samples, "headscale_map_messages_total", kind=kind) > 0
    assert value(samples, "headscale_change_batch_duration_seconds_count") >= 1
    assert value(samples, "headscale_change_propagation_seconds_count") >= 1
    # Propagation includes the batching delay, so it is never below it, and never absurd.
    propagation = (value(samples, "headscale_change_propagation_seconds_sum")
                   / value(samples, "headscale_change_propagation_seconds_count"))
    assert 0 < propagation < 5

    await nodes[1].stop()

    async def one_connected() -> bool:
        return value(await scrape(observed), "headscale_node_connected") == 1

    await wait_until(one_connected, 20, "headscale_node_connected == 1 after a client stopped")
    samples = await scrape(observed)
    assert value(samples, "headscale_node_count") == 2
    assert value(samples, "headscale_map_streams") == 1
