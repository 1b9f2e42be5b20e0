"""The audit log: a scripted sequence of administrative and login actions (REST calls and ts2021
registrations of a simulated machine) and what ``GET /api/v1/audit`` and ``audit.path`` say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from headscale_core.hookspecs import hookimpl
from headscale_core.providers import Deny
from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.simnode import SimNode

from .conftest import ApiClient, serving, write_config


class RefuseMallory:
    """An authorisation plugin that vetoes logins for the user mallory."""

    @hookimpl
    def headscale_authorize_login(self, identity: Any, registration: Any) -> Deny | None:
        return Deny("mallory may not log in here") if identity.name == "mallory" else None


@pytest.fixture
async def audited(tmp_path: Path, short_dir: Path) -> AsyncIterator[RunningServer]:
    config = write_config(tmp_path, short_dir / "hs.sock", audit={"path": str(tmp_path / "audit.jsonl")})
    async with serving(config) as srv:
        srv.ctx.plugins.pm.register(RefuseMallory())
        yield srv


@pytest.fixture
async def admin(audited: RunningServer) -> AsyncIterator[ApiClient]:
    _, key = await audited.state.create_api_key(actor="test")
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, audited.url + "/api/v1", key)


async def audit_log(api: ApiClient, settled_on: str, **params: str) -> list[dict[str, Any]]:
    """The log once the event ``settled_on`` (the last one the test caused) has been written."""
    events: list[dict[str, Any]] = []

    async def fetch() -> None:
        nonlocal events
        events = (await api.ok("GET", "/audit", params=params))["events"]

    async def written() -> bool:
        await fetch()
        return any(e["kind"] == settled_on for e in events)

    for _ in range(250):
        if await written():
            return events
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {settled_on} event in the audit log: {events}")


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


async def test_scripted_admin_and_login_actions_are_audited_with_actor_source_and_time(
        audited: RunningServer, admin: ApiClient, tmp_path: Path) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    admin_prefix = "api:" + (await admin.ok("GET", "/apikey"))["apiKeys"][0]["prefix"].split("-")[2]

    alice = (await admin.ok("POST", "/user", body={"name": "alice"}))["user"]
    mallory = (await admin.ok("POST", "/user", body={"name": "mallory"}))["user"]
    key = (await admin.ok("POST", "/preauthkey", body={"user": alice["id"], "reusable": True}))["preAuthKey"]
    reader = (await admin.ok("POST", "/apikey", body={"scope": "read"}))["apiKey"]
    assert (await admin.call("POST", "/user", key=reader, body={"name": "eve"}))[0] == 403
    assert (await admin.call("GET", "/node", key="hskey-api-AAAAAAAAAAAA-guessed"))[0] == 401

    # A machine over ts2021: first a key this server never issued, then the real one.
    laptop = SimNode(audited.url, "laptop")
    await laptop.connect()
    assert "invalid pre-auth key" in (await laptop.register("hskey-auth-AAAAAAAAAAAA-forged"))["Error"]
    assert (await laptop.register(key["key"]))["MachineAuthorized"]
    node_id = audited.state.store.by_node_key(str(laptop.node.node_public())).id

    # An interactive registration that the authorisation plugin refuses for mallory.
    phone = SimNode(audited.url, "phone")
    client = await phone.connect()
    auth_url = (await client.register(phone.node.node_public(), hostinfo={"Hostname": "phone"}))["AuthURL"]
    auth_id = auth_url.rsplit("/", 1)[-1]
    status, body = await admin.call("POST", "/auth/register", body={"user": mallory["id"], "authId": auth_id})
    assert status == 400 and "mallory may not log in here" in body["message"]

    await admin.ok("POST", f"/node/{node_id}/rename/workstation")
    await admin.ok("PUT", "/policy", body={"policy": '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'})
    await admin.ok("POST", "/preauthkey/expire", body={"id": key["id"]})
    await admin.ok("DELETE", f"/user/{mallory['id']}")
    await laptop.close()
    await phone.close()

    # (less the fixture's own key, made by calling the state service directly)
    events = [e for e in await audit_log(admin, "user.delete", since=started.isoformat()) if e["actor"] != "test"]

    def one(kind: str, **expected: Any) -> dict[str, Any]:
        matching = [e for e in by_kind(events, kind) if all(e.get(k) == v for k, v in expected.items())]
        assert len(matching) == 1, (kind, expected, by_kind(events, kind))
        return matching[0]

    # The REST API names the key that called and the caller's address.
    for kind, subject in (("user.create", f"user:{alice['id']}"), ("user.create", f"user:{mallory['id']}"),
                          ("preauthkey.create", f"preauthkey:{key['id']}"), ("node.rename", f"node:{node_id}"),
                          ("policy.set", "policy"), ("preauthkey.expire", f"preauthkey:{key['id']}"),
                          ("user.delete", f"user:{mallory['id']}")):
        one(kind, subject=subject, actor=admin_prefix, source="127.0.0.1")
    assert one("apikey.create", actor=admin_prefix)["details"] == {"scope": "read"}
    denied = one("access.denied", source="127.0.0.1")
    assert denied["details"]["method"] == "POST" and denied["actor"].startswith("api:")
    assert one("login.failed", actor="api")["details"]["reason"] == "API key unknown, expired or wrong"
    assert one("login.failed", actor="api")["subject"] == "apikey:AAAAAAAAAAAA"

    # Registrations name the machine and its address (host:port of the ts2021 connection).
    forged = [e for e in by_kind(events, "login.failed") if e["actor"].startswith("machine:")]
    assert len(forged) == 1 and "invalid pre-auth key" in forged[0]["details"]["reason"]
    assert forged[0]["source"].startswith("127.0.0.1:")
    login = one("login.ok", subject=f"node:{node_id}", actor=f"node:{node_id}")
    assert login["source"] == forged[0]["source"] and login["details"]["method"] == "authkey"
    assert one("node.register", subject=f"node:{node_id}")["source"] == forged[0]["source"]
    refused = one("login.refused", actor=admin_prefix, source="127.0.0.1")
    assert refused["subject"] == f"registration:{auth_id}" and refused["details"]["user"] == "mallory"
    assert refused["details"]["reason"] == "mallory may not log in here"

    # Every event the sequence caused has an actor, a source and a time within the test.
    now = datetime.now(UTC) + timedelta(seconds=1)
    for event in events:
        assert event["actor"] and event["source"], event
        assert started <= datetime.fromisoformat(event["time"].replace("Z", "+00:00")) <= now, event

    # audit.path holds the same events, as JSON lines.
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    from_file = [(e["kind"], e["actor"], e["subject"], e["source"], e["details"],
                  datetime.fromisoformat(e["time"])) for e in lines if e["actor"] != "test"]
    from_api = [(e["kind"], e["actor"], e["subject"], e["source"], e["details"],
                 datetime.fromisoformat(e["time"].replace("Z", "+00:00"))) for e in events]
    assert from_file == from_api


async def test_filters_by_kind_prefix_since_and_limit(audited: RunningServer, admin: ApiClient) -> None:
    for name in ("a", "b", "c"):
        await admin.ok("POST", "/user", body={"name": name})
    await admin.ok("POST", "/user/1/rename/aa")
    events = await audit_log(admin, "user.update", kind="user.")
    assert [e["kind"] for e in events] == ["user.create"] * 3 + ["user.update"]
    assert [e["kind"] for e in (await admin.ok("GET", "/audit", params={"kind": "user.c", "limit": "2"}))["events"]] \
        == ["user.create", "user.create"]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await admin.ok("GET", "/audit", params={"since": future}))["events"] == []
    status, body = await admin.call("GET", "/audit", params={"since": "yesterday"})
    assert status == 400 and "RFC 3339" in body["message"]
    status, body = await admin.call("GET", "/audit", params={"limit": "0"})
    assert status == 400 and "limit" in body["message"]


async def test_read_keys_may_read_the_log_and_nobody_may_change_it(audited: RunningServer,
                                                                   admin: ApiClient) -> None:
    await admin.ok("POST", "/user", body={"name": "alice"})
    _, reader = await audited.state.create_api_key(scope="read", actor="test")
    await audit_log(admin, "user.create")
    assert by_kind((await admin.ok("GET", "/audit", key=reader))["events"], "user.create")
    assert (await admin.call("GET", "/audit", key=None)) == (401, "Unauthorized")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _ = await admin.call(method, "/audit", body={})
        assert status == 501, method
    doc = await admin.ok("GET", "/openapi.json", key=None)
    assert set(doc["paths"]["/audit"]) == {"get"}
    assert doc["paths"]["/audit"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "properties"]["events"]["items"] == {"$ref": "#/components/schemas/AuditEvent"}
    assert set(doc["components"]["schemas"]["AuditEvent"]["properties"]) == {
        "time", "kind", "actor", "subject", "source", "details"}
