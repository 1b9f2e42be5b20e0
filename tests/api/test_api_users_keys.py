"""Users, pre-auth keys, API keys and authentication over real HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from headscale_core.testing.inprocess import RunningServer

from .conftest import ApiClient, EventRecorder

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z$")


# ---- authentication -----------------------------------------------------------------------


async def test_missing_or_bad_key_is_plain_text_401(api: ApiClient) -> None:
    assert await api.call("GET", "/user", key=None) == (401, "Unauthorized")
    assert await api.call("GET", "/user", key="hskey-api-000000000000-nope") == (401, "Unauthorized")
    assert await api.call("GET", "/user", key="not-a-key") == (401, "Unauthorized")


async def test_expired_key_is_refused(api: ApiClient, server: RunningServer) -> None:
    key, full = await server.state.create_api_key(actor="test")
    assert (await api.call("GET", "/user", key=full))[0] == 200
    await api.ok("POST", "/apikey/expire", body={"prefix": key.prefix})
    assert await api.call("GET", "/user", key=full) == (401, "Unauthorized")


async def test_read_scope_may_only_get(api: ApiClient, server: RunningServer) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    _, reader = await server.state.create_api_key(scope="read", actor="test")
    assert len((await api.ok("GET", "/user", key=reader))["users"]) == 1
    status, body = await api.call("DELETE", "/user/1", key=reader)
    assert status == 403 and body["code"] == 7 and "read" in body["message"]
    status, _ = await api.call("POST", "/user", key=reader, body={"name": "bob"})
    assert status == 403
    assert [u["name"] for u in (await api.ok("GET", "/user"))["users"]] == ["alice"]


async def test_openapi_is_public_and_lists_every_route(api: ApiClient, server: RunningServer) -> None:
    doc = await api.ok("GET", "/openapi.json", key=None)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    from headscale_core.api import make_api_app

    app = make_api_app(server.ctx, trusted_local=False)
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert documented == routed
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_unknown_route_and_wrong_method(api: ApiClient) -> None:
    assert await api.call("GET", "/nothing") == (404, {"code": 5, "message": "Not Found", "details": []})
    status, body = await api.call("PATCH", "/user")
    assert status == 501 and body["code"] == 12


async def test_local_socket_needs_no_key_and_acts_as_local(server: RunningServer, events: EventRecorder) -> None:
    import aiohttp

    connector = aiohttp.UnixConnector(path=server.addresses["unix_socket"])
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post("http://local/api/v1/user", json={"name": "sock"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["user"]["name"] == "sock"
    assert events.actors("user.create") == ["local"]


# ---- users --------------------------------------------------------------------------------


async def test_user_lifecycle(api: ApiClient, events: EventRecorder, admin_key: str) -> None:
    created = (await api.ok("POST", "/user", body={"name": "alice", "displayName": "Alice", "email": "a@x.org",
                                                   "unknownField": [1, 2]}))["user"]
    assert created == {"id": "1", "name": "alice", "createdAt": created["createdAt"], "displayName": "Alice",
                       "email": "a@x.org", "providerId": "", "provider": "", "profilePicUrl": ""}
    assert RFC3339.match(created["createdAt"])
    await api.ok("POST", "/user", body={"name": "bob"})
    assert [u["name"] for u in (await api.ok("GET", "/user"))["users"]] == ["alice", "bob"]
    assert [u["id"] for u in (await api.ok("GET", "/user", params={"name": "bob"}))["users"]] == ["2"]
    assert [u["name"] for u in (await api.ok("GET", "/user", params={"id": "1"}))["users"]] == ["alice"]
    assert [u["name"] for u in (await api.ok("GET", "/user", params={"email": "a@x.org"}))["users"]] == ["alice"]

    renamed = (await api.ok("POST", "/user/1/rename/carol"))["user"]
    assert renamed["name"] == "carol" and renamed["id"] == "1"
    assert await api.ok("DELETE", "/user/2") == {}
    assert [u["name"] for u in (await api.ok("GET", "/user"))["users"]] == ["carol"]
    prefix = admin_key.split("-")[2]
    assert events.actors("user.create") == [f"api:{prefix}"] * 2
    assert events.actors("user.delete") == [f"api:{prefix}"]


async def test_user_errors_write_nothing(api: ApiClient) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    await api.ok("POST", "/user", body={"name": "bob"})
    status, body = await api.call("POST", "/user", body={"name": "alice"})
    assert status == 409 and body["code"] == 6 and "already exists" in body["message"]
    assert set(body) == {"code", "message", "details"}
    status, body = await api.call("POST", "/user", raw=b'{"name": "x"')
    assert status == 400 and body["code"] == 3
    status, body = await api.call("POST", "/user", raw=b'["x"]')
    assert status == 400 and body["code"] == 3
    assert (await api.call("POST", "/user", body={}))[0] == 400
    assert (await api.call("POST", "/user", body={"name": "has space"}))[0] == 400
    assert (await api.call("POST", "/user/2/rename/alice"))[0] == 409
    assert (await api.call("POST", "/user/99/rename/zed"))[0] == 404
    status, body = await api.call("DELETE", "/user/99")
    assert status == 404 and body["code"] == 5
    assert (await api.call("DELETE", "/user/abc"))[0] == 400
    assert [u["name"] for u in (await api.ok("GET", "/user"))["users"]] == ["alice", "bob"]


# ---- pre-auth keys ------------------------------------------------------------------------


async def test_preauth_key_lifecycle(api: ApiClient, server: RunningServer) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    expiration = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    key = (await api.ok("POST", "/preauthkey", body={"user": "1", "reusable": True, "ephemeral": False,
                                                     "expiration": expiration, "aclTags": []}))["preAuthKey"]
    assert key["key"].startswith("hskey-auth-") and not key["key"].endswith("***")
    assert key["user"]["name"] == "alice" and key["id"] == "1" and key["reusable"] is True
    assert key["used"] is False and key["aclTags"] == [] and RFC3339.match(key["expiration"])

    tagged = (await api.ok("POST", "/preauthkey", body={"aclTags": ["tag:server"], "expiration": None}))["preAuthKey"]
    assert tagged["user"] is None and tagged["aclTags"] == ["tag:server"]
    by_name = (await api.ok("POST", "/preauthkey", body={"user": "alice"}))["preAuthKey"]
    assert by_name["user"]["id"] == "1"

    listed = (await api.ok("GET", "/preauthkey"))["preAuthKeys"]
    assert [k["id"] for k in listed] == ["1", "2", "3"]
    assert all(re.fullmatch(r"hskey-auth-[0-9a-f]{12}-\*\*\*", k["key"]) for k in listed)
    assert [k["id"] for k in (await api.ok("GET", "/preauthkey", params={"user": "1"}))["preAuthKeys"]] == ["1", "3"]

    assert await api.ok("POST", "/preauthkey/expire", body={"id": "1"}) == {}
    # older clients: {user, key} with the key as listed or in full
    assert await api.ok("POST", "/preauthkey/expire", body={"user": "1", "key": by_name["key"]}) == {}
    now = datetime.now(UTC)
    for k in (await api.ok("GET", "/preauthkey"))["preAuthKeys"]:
        expired = datetime.fromisoformat(k["expiration"].replace("Z", "+00:00")) <= now
        assert expired == (k["id"] in ("1", "3"))
    # an expired key registers nothing
    reg = await server.ctx.extras["registrar"].register(
        {"NodeKey": "nodekey:" + "ab" * 32, "Hostinfo": {"Hostname": "n"}, "Auth": {"AuthKey": key["key"]}},
        "mkey:" + "cd" * 32)
    assert "expired" in reg["Error"]

    assert await api.ok("DELETE", "/preauthkey", params={"id": "2"}) == {}
    assert [k["id"] for k in (await api.ok("GET", "/preauthkey"))["preAuthKeys"]] == ["1", "3"]


async def test_preauth_key_errors_write_nothing(api: ApiClient) -> None:
    await api.ok("POST", "/user", body={"name": "alice"})
    status, body = await api.call("POST", "/preauthkey", body={"user": "42"})
    assert status == 404 and body["code"] == 5
    assert (await api.call("POST", "/preauthkey", body={}))[0] == 400  # no user, no tags
    assert (await api.call("POST", "/preauthkey", body={"user": "1", "aclTags": ["server"]}))[0] == 400
    assert (await api.call("POST", "/preauthkey", body={"user": "1", "expiration": "tomorrow"}))[0] == 400
    assert (await api.call("POST", "/preauthkey", body={"user": "1", "reusable": "maybe"}))[0] == 400
    assert (await api.call("POST", "/preauthkey", raw=b"{"))[0] == 400
    assert (await api.ok("GET", "/preauthkey"))["preAuthKeys"] == []
    assert (await api.call("POST", "/preauthkey/expire", body={"id": "7"}))[0] == 404
    assert (await api.call("POST", "/preauthkey/expire", body={}))[0] == 400
    assert (await api.call("DELETE", "/preauthkey", params={"id": "7"}))[0] == 404


# ---- API keys -----------------------------------------------------------------------------


async def test_api_key_lifecycle(api: ApiClient, admin_key: str) -> None:
    expiration = (datetime.now(UTC) + timedelta(days=10)).isoformat().replace("+00:00", "Z")
    full = (await api.ok("POST", "/apikey", body={"expiration": expiration}))["apiKey"]
    assert re.fullmatch(r"hskey-api-[0-9a-f]{12}-\S+", full)
    keys = (await api.ok("GET", "/apikey"))["apiKeys"]
    assert [k["id"] for k in keys] == ["1", "2"]
    new = keys[1]
    assert new["prefix"] == f"hskey-api-{full.split('-')[2]}-***"
    # Headplane: the listed prefix without '*' is a prefix of the pasted key, expiration non-null
    assert full.startswith(new["prefix"].rstrip("*")) and RFC3339.match(new["expiration"])
    assert set(new) >= {"id", "prefix", "expiration", "createdAt", "lastSeen"}
    assert keys[0]["lastSeen"] is not None  # the admin key has been used

    reader = (await api.ok("POST", "/apikey", body={"scope": "read"}))["apiKey"]
    assert (await api.ok("GET", "/apikey", key=reader))["apiKeys"][2]["scope"] == "read"
    assert (await api.call("POST", "/apikey", body={"scope": "root"}))[0] == 400

    await api.ok("POST", "/apikey/expire", body={"prefix": new["prefix"]})
    assert await api.call("GET", "/apikey", key=full) == (401, "Unauthorized")
    assert await api.ok("DELETE", f"/apikey/{full.split('-')[2]}") == {}
    assert await api.ok("DELETE", "/apikey/_", params={"id": "3"}) == {}
    assert [k["id"] for k in (await api.ok("GET", "/apikey"))["apiKeys"]] == ["1"]
    assert (await api.call("DELETE", "/apikey/ffffffffffff"))[0] == 404
    assert (await api.call("POST", "/apikey/expire", body={}))[0] == 400
