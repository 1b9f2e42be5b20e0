"""A 20-node run of the load generator against each server: every simulated node registers,
gets its map, and ends every phase with exactly the expected peers and endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import scenarios
from benchmarks.loadgen import Fleet
from benchmarks.scenarios import Bench
from benchmarks.servers import BenchServer, HeadscaleServer, OursServer, headscale_path
from benchmarks.tailnets import dense_tailnet, dense_visibility, hidden_user_policy, hidden_user_visibility

NODES = 20


async def smoke(server: BenchServer) -> dict[str, dict[str, object]]:
    tailnet = dense_tailnet()
    keys = await server.launch(tailnet.users, tailnet.tags)
    results = {}
    try:
        bench = Bench(server=server, fleet=Fleet.generate(server.url, NODES), visibility=dense_visibility,
                      timeout=30, changes=5, idle_seconds=1)
        tailnet.assign(bench.fleet, keys)
        async with bench.fleet:
            results["registration"] = await scenarios.registration_storm(bench)
            results["reconnect"] = await scenarios.reconnect_storm(bench)
            results["endpoint"] = await scenarios.endpoint_change(bench)
            results["hostinfo"] = await scenarios.hostinfo_change(bench)
            results["policy"] = await scenarios.policy_change(bench, hidden_user_policy(), tailnet.policy,
                                                              hidden_user_visibility)
    finally:
        server.stop()
    return results


def assert_converged(results: dict[str, dict[str, object]]) -> None:
    for phase, figures in results.items():
        assert figures["problems"] == 0, (phase, figures["problem_examples"])
    assert results["registration"]["nodes"] == NODES
    assert results["endpoint"]["recipients_per_change"] == NODES - 1
    assert results["endpoint"]["bytes_per_recipient"] > 0


@pytest.mark.slow
async def test_smoke_against_our_server(tmp_path: Path) -> None:
    assert_converged(await smoke(OursServer(tmp_path / "ours", dense_tailnet().policy, cpu=None)))


@pytest.mark.slow
@pytest.mark.skipif(not headscale_path().exists(),
                    reason=f"Headscale is not built at {headscale_path()}: `python -m benchmarks run` installs it "
                           "(GOBIN=.tools/bin go install github.com/juanfont/headscale/cmd/headscale@v0.29.2)")
async def test_smoke_against_headscale(tmp_path: Path) -> None:
    assert_converged(await smoke(HeadscaleServer(tmp_path / "headscale", dense_tailnet().policy, cpu=None)))
