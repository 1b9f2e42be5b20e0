"""``GET /api/v1/policy/explain`` on a running server with a real policy and registered nodes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from headscale_core.testing.inprocess import RunningServer

from .conftest import ApiClient

POLICY = """{
  "tagOwners": {"tag:server": ["alice@"]},
  "acls": [
    // admins log in to servers
    {"action": "accept", "src": ["alice@"], "dst": ["tag:server:22"]},
    {"action": "accept", "src": ["bob@"], "dst": ["tag:server:443"], "proto": "tcp"},
  ],
}"""

_keys = itertools.count(1)


async def join(server: RunningServer, auth_key: str, hostname: str) -> int:
    """Register a node with a pre-auth key, as a client's first RegisterRequest does; its ID."""
    node_key, machine_key = f"nodekey:{next(_keys):064x}", f"mkey:{next(_keys):064x}"
    answer = await server.ctx.extras["registrar"].register(
        {"NodeKey": node_key, "Hostinfo": {"Hostname": hostname}, "Auth": {"AuthKey": auth_key}}, machine_key)
    assert answer.get("MachineAuthorized"), answer
    return server.state.store.by_node_key(node_key).id  # type: ignore[no-any-return]


async def tailnet(server: RunningServer) -> dict[str, Any]:
    """alice's laptop, bob's phone and a tag:server node; returns them by name."""
    state = server.state
    alice, bob = await state.create_user("alice"), await state.create_user("bob")
    nodes = {
        "laptop": await join(server, (await state.create_preauth_key(alice))[1], "laptop"),
        "phone": await join(server, (await state.create_preauth_key(bob))[1], "phone"),
        "server": await join(server, (await state.create_preauth_key(None, tags=["tag:server"]))[1], "server"),
    }
    return {name: state.node(nid) for name, nid in nodes.items()}


async def test_without_a_policy_everything_is_allowed(api: ApiClient, server: RunningServer) -> None:
    await tailnet(server)
    answer = await api.ok("GET", "/policy/explain", params={"src": "phone", "dst": "server", "port": "22"})
    assert answer["allowed"] is True and answer["ruleIndex"] is None
    assert "there is no policy" in answer["reason"]


async def test_names_the_rule_that_allows_and_says_when_none_does(api: ApiClient, server: RunningServer) -> None:
    nodes = await tailnet(server)
    await server.state.set_policy(POLICY)

    async def explain(src: str, dst: str, port: str, proto: str = "") -> dict[str, Any]:
        return await api.ok(  # type: ignore[no-any-return]
            "GET", "/policy/explain", params={"src": src, "dst": dst, "port": port, "proto": proto})

    answer = await explain("laptop", "server", "22")
    assert (answer["allowed"], answer["ruleKind"], answer["ruleIndex"]) == (True, "acls", 0)
    assert '"dst": ["tag:server:22"]' in answer["ruleText"] and answer["reason"].startswith("allowed by acls[0]")
    assert (answer["srcName"], answer["dstId"], answer["port"], answer["proto"]) == (
        "laptop", str(nodes["server"].id), 22, "tcp")
    # the same question by ID and by tailnet IP (IPv4 and IPv6) gets the same answer
    for src, dst in ((str(nodes["laptop"].id), nodes["server"].ipv4), (nodes["laptop"].ipv6, str(nodes["server"].id))):
        assert (await explain(src, dst, "22"))["ruleIndex"] == 0

    assert (await explain("phone", "server", "443"))["ruleIndex"] == 1
    denied = await explain("phone", "server", "22")
    assert (denied["allowed"], denied["ruleIndex"], denied["reason"]) == (False, None, "denied: no rule matches")
    assert (await explain("phone", "server", "443", "udp"))["allowed"] is False  # acls[1] is tcp only
    assert (await explain("laptop", "server", "", "icmp"))["ruleIndex"] == 0  # no port for ICMP
    assert (await explain("server", "laptop", "22"))["allowed"] is False  # rules are one-way


@pytest.mark.parametrize(("params", "status", "text"), [
    ({"src": "laptop", "dst": "nowhere", "port": "22"}, 404, "dst: no node is called 'nowhere'"),
    ({"src": "99", "dst": "server", "port": "22"}, 404, "node 99 does not exist"),
    ({"src": "100.127.0.1", "dst": "server", "port": "22"}, 404, "src: no node has the address 100.127.0.1"),
    ({"src": "laptop", "dst": "server"}, 400, "port '' is not a port number 0-65535 (it is required for tcp)"),
    ({"src": "laptop", "dst": "server", "port": "70000"}, 400, "port '70000' is not a port number"),
    ({"src": "laptop", "dst": "server", "port": "22", "proto": "tcpp"}, 400, "proto 'tcpp' is not a protocol"),
    ({"dst": "server", "port": "22"}, 400, "src is required"),
])
async def test_questions_it_cannot_answer_say_why(api: ApiClient, server: RunningServer, params: dict[str, str],
                                                   status: int, text: str) -> None:
    await tailnet(server)
    got_status, body = await api.call("GET", "/policy/explain", params=params)
    assert got_status == status and text in body["message"], body


async def test_a_hostname_two_nodes_share_must_be_replaced_by_an_id(api: ApiClient, server: RunningServer) -> None:
    await tailnet(server)
    carol = await server.state.create_user("carol")
    key = (await server.state.create_preauth_key(carol, reusable=True))[1]
    first, second = await join(server, key, "box"), await join(server, key, "box")
    params = {"src": "box", "dst": "laptop", "port": "1"}
    # the given name is unique and wins ...
    assert (await api.ok("GET", "/policy/explain", params=params))["srcId"] == str(first)
    # ... but once neither node is given that name, "box" names two nodes
    await server.state.rename_node(server.state.node(first), "box-one")
    status, body = await api.call("GET", "/policy/explain", params=params)
    assert status == 400 and body["message"] == (
        f"src: 2 nodes are called 'box' (IDs {first}, {second}): name one by ID")
