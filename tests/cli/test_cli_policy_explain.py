"""``headscale policy explain`` against a running server: verdict, deciding rule, exit status."""

from __future__ import annotations

import asyncio
import json

import pytest
from api.test_api_policy_explain import POLICY, tailnet  # noqa: F401  (fixture)

from headscale_core.cli.admin_policy_explain import split_destination
from headscale_core.errors import HeadscaleError
from headscale_core.testing.inprocess import RunningServer

from .conftest import Cli, Result


async def test_exit_status_says_allowed_denied_or_unanswerable(cli: Cli, server: RunningServer) -> None:
    nodes = await tailnet(server)
    await server.state.set_policy(POLICY)

    async def run(*argv: str) -> Result:
        return await asyncio.to_thread(cli, server.ctx.config, *argv)

    r = await run("policy", "explain", "--src", "laptop", "--dst", "server:22")
    assert r.code == 0, r
    server_id, laptop_id = nodes["server"].id, nodes["laptop"].id
    assert r.out.splitlines() == [
        f"allowed: laptop ({laptop_id}) -> server ({server_id}) port 22/tcp",
        '  by acls[0]: {"action": "accept", "dst": ["tag:server:22"], "src": ["alice@"]}',
    ]
    r = await run("policy", "explain", "--src", "phone", "--dst", f"[{nodes['server'].ipv6}]:443/udp")
    assert r.code == 1 and r.out.splitlines()[1] == "  no rule matches", r
    r = await run("-o", "json", "policy", "explain", "--src", nodes["phone"].ipv4, "--dst", f"{server_id}:443")
    answer = json.loads(r.out)
    assert r.code == 0 and (answer["ruleKind"], answer["ruleIndex"], answer["proto"]) == ("acls", 1, "tcp")
    r = await run("policy", "explain", "--src", "laptop", "--dst", "server/icmp")
    assert r.code == 0 and "port 0/icmp" in r.out
    r = await run("policy", "explain", "--src", "nobody", "--dst", "server:22")
    assert (r.code, r.out) == (2, "") and r.err.startswith("Error: src: no node is called 'nobody'")
    r = await run("policy", "explain", "--src", "laptop", "--dst", "server")
    assert r.code == 2 and "port '' is not a port number" in r.err


@pytest.mark.parametrize(("text", "parts"), [
    ("web:443", ("web", "443", "")),
    ("7:22/tcp", ("7", "22", "tcp")),
    ("100.64.0.3:53/udp", ("100.64.0.3", "53", "udp")),
    ("[fd7a:115c:a1e0::3]:53/udp", ("fd7a:115c:a1e0::3", "53", "udp")),
    ("db/icmp", ("db", "", "icmp")),
])
def test_destination_syntax(text: str, parts: tuple[str, str, str]) -> None:
    assert split_destination(text) == parts


@pytest.mark.parametrize("text", ["fd7a:115c:a1e0::3:53", "[fd7a::3]53", ":22"])
def test_destination_mistakes_are_named(text: str) -> None:
    with pytest.raises(HeadscaleError, match="--dst"):
        split_destination(text)
