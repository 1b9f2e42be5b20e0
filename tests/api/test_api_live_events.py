"""``GET /api/v1/events``: a UI's live view while a simulated machine registers, comes online
and goes offline, and what happens to clients that fall behind or outlive the server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from headscale_core.api.live import LiveEvents
from headscale_core.testing.inprocess import RunningServer
from headscale_core.testing.simnode import SimNode, next_message, wait_for

from .conftest import ApiClient, serving, write_config


class EventStream:
    """Reads ``event:``/``data:`` blocks from a text/event-stream response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, within: float = 5.0) -> tuple[str, dict[str, Any]] | None:
        """The next event (comments skipped); None when the server ended the stream."""
        kind, data = "", ""
        while True:
            try:
                line = await asyncio.wait_for(self.response.content.readline(), within)
            except aiohttp.ClientPayloadError:  # the server cut the connection
                return None
            if not line:
                return None
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                kind = text[7:]
            elif text.startswith("data: "):
                data = text[6:]
            elif not text and kind:
                return kind, json.loads(data)

    async def until(self, kind: str, within: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
        """Events up to and including the first of ``kind``."""
        seen = []
        while True:
            event = await self.next(within)
            assert event is not None, f"stream ended before {kind}: {seen}"
            seen.append(event)
            if event[0] == kind:
                return seen


@asynccontextmanager
async def events_of(server: RunningServer, key: str | None) -> AsyncIterator[EventStream]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(server.url + "/api/v1/events",
                                                               headers=headers) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        stream = EventStream(response)
        assert (await stream.next())[0] == "ready"  # type: ignore[index]
        yield stream


async def test_a_ui_sees_a_node_register_come_online_and_go_offline(server: RunningServer, api: ApiClient,
                                                                  admin_key: str) -> None:
    async with events_of(server, admin_key) as live:
        alice = (await api.ok("POST", "/user", body={"name": "alice"}))["user"]
        assert await live.next() == ("user.added", {"kind": "user.added", "time": _any,
                                                    "user": {"id": alice["id"], "name": "alice"}})
        key = (await api.ok("POST", "/preauthkey", body={"user": alice["id"]}))["preAuthKey"]
        kind, data = await live.next()  # type: ignore[misc]
        assert kind == "preauthkey.create" and data["subject"] == f"preauthkey:{key['id']}"

        laptop = SimNode(server.url, "laptop")
        client = await laptop.join(key["key"])
        seen = await live.until("node.added")
        node = seen[-1][1]["node"]
        assert (node["givenName"], node["online"], node["user"]) == ("laptop", False, alice["id"])
        assert (await live.until("login.ok"))[-1][1]["subject"] == f"node:{node['id']}"

        stream = client.map_stream(laptop.map_request())
        await next_message(stream)  # the full map: the session is open
        kind, data = (await live.until("node.online"))[-1]
        assert data["node"]["id"] == node["id"] and data["node"]["online"] is True

        await stream.aclose()
        kind, data = (await live.until("node.offline"))[-1]
        assert data["node"] == {**node, "online": False}

        await api.ok("POST", f"/node/{node['id']}/rename/workstation")
        assert (await live.until("node.changed"))[-1][1]["node"]["givenName"] == "workstation"
        await api.ok("PUT", "/policy", body={"policy": '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'})
        await live.until("policy.changed")
        await api.ok("DELETE", f"/node/{node['id']}")
        assert (await live.until("node.removed"))[-1][1]["node"] == {"id": node["id"]}
        await api.ok("DELETE", f"/user/{alice['id']}")
        assert (await live.until("user.removed"))[-1][1]["user"] == {"id": alice["id"]}
        await laptop.close()


async def test_what_happened_while_nobody_watched_is_still_told_apart(server: RunningServer, api: ApiClient,
                                                                     admin_key: str) -> None:
    """With no subscriber the hub encodes nothing, but still knows which nodes and users exist:
    a UI that connects later sees their changes as changes, not additions."""
    hub: LiveEvents = server.ctx.extras["live_events"]
    assert not hub.subscribers
    alice = (await api.ok("POST", "/user", body={"name": "alice"}))["user"]
    key = (await api.ok("POST", "/preauthkey", body={"user": alice["id"]}))["preAuthKey"]
    laptop = SimNode(server.url, "laptop")
    await laptop.join(key["key"])
    node_id = str(server.state.store.by_node_key(str(laptop.node.node_public())).id)
    async with events_of(server, admin_key) as live:
        await api.ok("POST", f"/node/{node_id}/rename/workstation")
        assert (await live.until("node.changed"))[-1][1]["node"]["id"] == node_id
        await api.ok("DELETE", f"/node/{node_id}")
        await live.until("node.removed")
    await laptop.close()


async def test_the_stream_needs_a_key_and_a_read_key_is_enough(server: RunningServer, api: ApiClient) -> None:
    assert await api.call("GET", "/events", key=None) == (401, "Unauthorized")
    _, reader = await server.state.create_api_key(scope="read", actor="test")
    async with events_of(server, reader) as live:
        await api.ok("POST", "/user", body={"name": "bob"})
        assert (await live.next())[0] == "user.added"  # type: ignore[index]


async def test_a_client_that_falls_behind_is_disconnected(server: RunningServer, admin_key: str) -> None:
    hub: LiveEvents = server.ctx.extras["live_events"]
    hub.queue_limit = 4
    async with events_of(server, admin_key) as slow, events_of(server, admin_key) as other:
        await wait_for(lambda: len(hub.subscribers) == 2)
        for n in range(10):  # no await in between: neither stream gets to read its queue
            hub.publish("user.changed", {"user": {"id": str(n), "name": f"u{n}"}})
        assert not hub.subscribers
        for stream in (slow, other):
            while (event := await stream.next()) is not None:  # what was queued, then the end
                assert event[0] == "user.changed"
    hub.queue_limit = 256
    async with events_of(server, admin_key) as fresh:  # reconnecting works
        hub.publish("policy.changed", {})
        assert (await fresh.next())[0] == "policy.changed"  # type: ignore[index]


async def test_open_streams_end_when_the_server_stops(tmp_path: Path, short_dir: Path) -> None:
    config = write_config(tmp_path, short_dir / "hs.sock")
    async with aiohttp.ClientSession() as session:
        async with serving(config) as srv:
            _, key = await srv.state.create_api_key(actor="test")
            response = await session.get(srv.url + "/api/v1/events", headers={"Authorization": f"Bearer {key}"})
            stream = EventStream(response)
            assert (await stream.next())[0] == "ready"  # type: ignore[index]
        assert await stream.next(within=10) is None
        response.release()


class _Anything:
    def __eq__(self, other: object) -> bool:
        return True


_any = _Anything()
