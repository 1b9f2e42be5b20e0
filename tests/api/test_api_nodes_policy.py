"""Nodes, pending registrations, policy and health over real HTTP."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from headscale_core.testing.inprocess import RunningServer

from .conftest import ApiClient, EventRecorder, serving, write_config

_keys = itertools.count(1)


def _key(kind: str) -> str:
    return f"{kind}:{next(_keys):064x}"


async def join_with_key(server: RunningServer, auth_key: str, hostname: str, routes: list[str] | None = None) -> None:
    hostinfo: dict[str, Any] = {"Hostname": hostname, "RoutableIPs": routes or []}
    answer = await server.ctx.extras["registrar"].register(
        {"NodeKey": _key("nodekey"), "Hostinfo": hostinfo, "Auth": {"AuthKey": auth_key}}, _key("mkey"))
    assert answer.get("MachineAuthorized"), answer


async def start_interactive(server: RunningServer, hostname: str) -> tuple[str, str]:
    """A pending registration: (registration id, machine key)."""
    machine = _key("mkey")
    answer = await server.ctx.extras["registrar"].register(
        {"NodeKey": _key("nodekey"), "Hostinfo": {"Hostname": hostname}}, machine)
    return answer["AuthURL"].rsplit("/", 1)[-1], machine


async def test_node_lifecycle(api: ApiClient, server: RunningServer, events: EventRecorder, admin_key: str) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    await api.ok("POST", "/user", body={"name": "bob"})
    key = (await api.ok("POST", "/preauthkey", body={"user": "1", "reusable": True}))["preAuthKey"]["key"]
    await join_with_key(server, key, "web", routes=["10.1.0.0/24"])
    await join_with_key(server, key, "db")

    nodes = (await api.ok("GET", "/node"))["nodes"]
    assert [n["givenName"] for n in nodes] == ["web", "db"]
    web = nodes[0]
    assert web["id"] == "1" and web["user"]["name"] == "alice" and web["name"] == "web"
    assert web["registerMethod"] == "REGISTER_METHOD_AUTH_KEY" and web["online"] is False
    assert web["availableRoutes"] == ["10.1.0.0/24"] and web["approvedRoutes"] == []
    assert web["preAuthKey"]["id"] == "1" and web["preAuthKey"]["key"].endswith("-***")
    assert web["ipAddresses"] and web["machineKey"].startswith("mkey:") and web["tags"] == []
    assert set(web) >= {"nodeKey", "discoKey", "lastSeen", "expiry", "createdAt", "subnetRoutes"}
    assert [n["id"] for n in (await api.ok("GET", "/node", params={"user": "alice"}))["nodes"]] == ["1", "2"]
    assert (await api.ok("GET", "/node", params={"user": "2"}))["nodes"] == []

    assert (await api.ok("GET", "/node/2"))["node"]["givenName"] == "db"
    assert (await api.ok("POST", "/node/2/rename/database"))["node"]["givenName"] == "database"
    status, body = await api.call("POST", "/node/1/rename/database")
    assert status == 409 and body["code"] == 6
    assert (await api.call("POST", "/node/1/rename/Not_Valid!"))[0] == 400

    routed = (await api.ok("POST", "/node/1/approve_routes", body={"routes": ["10.1.0.0/24"]}))["node"]
    assert routed["approvedRoutes"] == ["10.1.0.0/24"] and routed["subnetRoutes"] == ["10.1.0.0/24"]
    assert (await api.call("POST", "/node/1/approve_routes", body={"routes": ["10.1.0.0/33"]}))[0] == 400
    assert (await api.ok("GET", "/node/1"))["node"]["approvedRoutes"] == ["10.1.0.0/24"]

    tagged = (await api.ok("POST", "/node/2/tags", body={"tags": ["tag:db"]}))["node"]
    assert tagged["tags"] == ["tag:db"]
    assert tagged["user"]["id"] == "2147455555" and tagged["user"]["name"] == "tagged-devices"
    assert (await api.call("POST", "/node/2/tags", body={"tags": ["db"]}))[0] == 400
    moved = (await api.ok("POST", "/node/2/user", body={"user": "2"}))["node"]
    assert moved["user"]["name"] == "bob" and moved["tags"] == []

    expired = (await api.ok("POST", "/node/1/expire"))["node"]
    assert expired["expiry"] is not None
    later = (await api.ok("POST", "/node/1/expire", params={"expiry": "2031-01-02T03:04:05Z"}))["node"]
    assert later["expiry"] == "2031-01-02T03:04:05Z"
    never = (await api.ok("POST", "/node/1/expire", params={"disableExpiry": "true"}))["node"]
    assert never["expiry"] is None
    assert (await api.call("POST", "/node/1/expire", params={"expiry": "soon"}))[0] == 400

    assert await api.ok("DELETE", "/node/2") == {}
    assert [n["id"] for n in (await api.ok("GET", "/node"))["nodes"]] == ["1"]
    for method, path in (("GET", "/node/9"), ("DELETE", "/node/9"), ("POST", "/node/9/rename/x"),
                         ("POST", "/node/9/expire"), ("POST", "/node/9/tags")):
        status, body = await api.call(method, path)
        assert (status, body["code"]) == (404, 5), (method, path)
    assert (await api.call("GET", "/node/abc"))[0] == 400
    status, body = await api.call("DELETE", "/user/1")  # alice still owns node 1
    assert status == 409
    prefix = admin_key.split("-")[2]
    assert events.actors("node.rename") == [f"api:{prefix}"]
    assert events.actors("node.delete") == [f"api:{prefix}"]


async def test_register_pending_node(api: ApiClient, server: RunningServer) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    reg_id, _ = await start_interactive(server, "laptop")
    node = (await api.ok("POST", "/node/register", params={"user": "alice", "key": reg_id}))["node"]
    assert node["givenName"] == "laptop" and node["user"]["name"] == "alice"
    assert node["registerMethod"] == "REGISTER_METHOD_CLI" and node["preAuthKey"] is None

    reg_id, _ = await start_interactive(server, "phone")
    node = (await api.ok("POST", "/auth/register", body={"user": "1", "authId": reg_id}))["node"]
    assert node["givenName"] == "phone"

    status, body = await api.call("POST", "/node/register", params={"user": "alice", "key": "nope"})
    assert status == 404 and body["code"] == 5
    reg_id, _ = await start_interactive(server, "tablet")
    assert (await api.call("POST", "/node/register", params={"user": "zed", "key": reg_id}))[0] == 404
    assert (await api.call("POST", "/auth/register", body={"authId": reg_id}))[0] == 400
    assert len((await api.ok("GET", "/node"))["nodes"]) == 2  # nothing half-registered

    assert await api.ok("POST", "/auth/reject", body={"authId": reg_id}) == {}
    assert (await api.call("POST", "/auth/reject", body={"authId": "nope"}))[0] == 404
    # approve needs a machine that already has a user's node
    assert (await api.call("POST", "/auth/approve", body={"authId": (await start_interactive(server, "x"))[0]}))[0] == 400


async def test_policy_database_mode(api: ApiClient, events: EventRecorder) -> None:
    assert await api.ok("GET", "/policy") == {"policy": "", "updatedAt": None}
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]} // comment\n'
    stored = await api.ok("PUT", "/policy", body={"policy": text})
    assert stored["policy"] == text and stored["updatedAt"].endswith("Z")
    assert await api.ok("GET", "/policy") == stored

    status, body = await api.call("PUT", "/policy", body={"policy": '{"acls": [{"action": "deny"}]}'})
    assert status == 400 and body["code"] == 3
    assert (await api.call("PUT", "/policy", body={}))[0] == 400
    assert (await api.ok("GET", "/policy"))["policy"] == text  # unchanged

    assert await api.ok("POST", "/policy/check", body={"policy": text}) == {}
    assert (await api.call("POST", "/policy/check", body={"policy": "{nope"}))[0] == 400
    assert len(events.actors("policy.set")) == 1


async def test_policy_file_mode_refuses_set(tmp_path: Path, short_dir: Path) -> None:
    import aiohttp

    policy = tmp_path / "policy.hujson"
    policy.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
    config = write_config(tmp_path / "data", short_dir / "hs.sock", policy={"mode": "file", "path": str(policy)})
    async with serving(config) as srv, aiohttp.ClientSession() as session:
        _, key = await srv.state.create_api_key(actor="test")
        api = ApiClient(session, srv.url + "/api/v1", key)
        assert (await api.ok("GET", "/policy"))["policy"] == policy.read_text()
        status, body = await api.call("PUT", "/policy", body={"policy": '{"acls": []}'})
        assert status == 400 and body["code"] == 9 and "policy.mode is file" in body["message"]
        assert (await api.ok("GET", "/policy"))["updatedAt"] is None


async def test_health(api: ApiClient) -> None:
    assert await api.ok("GET", "/health") == {"databaseConnectivity": True}
