"""The DERP map served to clients: derp.paths and derp.urls merged through the provider hook."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from headscale_core.testing.inprocess import running

REGION_YAML = """
regions:
  900:
    regionid: 900
    regioncode: lab
    regionname: Lab relay
    nodes:
      - name: 900a
        regionid: 900
        hostname: derp.lab.test
        ipv4: 127.0.0.1
        stunport: -1
        derpport: 3340
"""


async def test_paths_and_urls_merge_into_the_served_map(tmp_path: Path) -> None:
    path = tmp_path / "derp.yaml"
    path.write_text(REGION_YAML)
    remote = {"Regions": {"901": {"RegionID": 901, "RegionCode": "remote", "RegionName": "Remote",
                                  "Nodes": [{"Name": "901a", "RegionID": 901, "HostName": "127.0.0.1"}]}}}

    async def derpmap(request: web.Request) -> web.Response:
        return web.json_response(remote)

    app = web.Application()
    app.add_routes([web.get("/derpmap.json", derpmap)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with running(tmp_path / "srv", derp={
                "paths": [str(path)], "urls": [f"http://127.0.0.1:{port}/derpmap.json",
                                               "http://127.0.0.1:1/unreachable.json"],
                "server": {"enabled": False}}) as srv:
            regions = srv.state.derp_map["Regions"]
            assert sorted(regions) == [900, 901]
            assert regions[900]["Nodes"][0]["HostName"] == "derp.lab.test"
            assert regions[900]["Nodes"][0]["STUNPort"] == -1
            assert regions[901]["RegionCode"] == "remote"
            json.dumps(srv.state.derp_map)  # must serialise for the map
    finally:
        await runner.cleanup()
