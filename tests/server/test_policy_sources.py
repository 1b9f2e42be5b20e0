"""Where the policy comes from, on a running server: a watched file (reloads, bad edits) and
autoApprovers acting on routes a connected node advertises."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import zstandard

from headscale_core.events import Event
from headscale_core.hookspecs import hookimpl
from headscale_core.protocol.keys import PrivateKey
from headscale_core.protocol.mapstream import decompress_frames
from headscale_core.testing.inprocess import running
from headscale_core.testing.tsclient import MapStream, TSClient


class Events:
    @hookimpl
    def headscale_event(self, event: Event) -> None:
        self.seen.append(event)

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.seen if e.kind == kind]


class Machine:
    """A simulated client: keys, a ts2021 connection, its map requests."""

    def __init__(self, url: str, hostname: str) -> None:
        self.url, self.hostname = url, hostname
        self.machine, self.node, self.disco = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
        self.client: TSClient

    async def join(self, auth_key: str) -> None:
        self.client = await TSClient.connect(self.url, machine_private=self.machine)
        await self.client.register(self.node.node_public(), auth_key=auth_key, hostinfo={"Hostname": self.hostname})

    def stream(self, **hostinfo: Any) -> MapStream:
        return self.client.map_stream({
            "Version": 130, "NodeKey": str(self.node.node_public()), "DiscoKey": str(self.disco.disco_public()),
            "Stream": True, "Compress": "zstd", "KeepAlive": True,
            "Hostinfo": {"Hostname": self.hostname, **hostinfo}})


def acl(src: str, dst: str) -> str:
    return json.dumps({"tagOwners": {"tag:server": ["alice@"]},
                       "acls": [{"action": "accept", "src": [src], "dst": [dst]}]})


def filter_ports(packet_filter: list[dict[str, Any]]) -> set[tuple[int, int]]:
    return {(p["Ports"]["First"], p["Ports"]["Last"]) for rule in packet_filter for p in rule.get("DstPorts", [])}


async def next_filter(stream: MapStream, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next PacketFilter the server pushes on this stream."""
    async with asyncio.timeout(timeout):
        async for message in stream:
            if "PacketFilter" in message:
                return message["PacketFilter"]  # type: ignore[no-any-return]
    raise AssertionError("the map stream ended")


async def no_filter_within(stream: MapStream, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            async for message in stream:
                assert "PacketFilter" not in message, message
    except TimeoutError:
        pass


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Poll server state that changes without a message to wait on (audit events, approvals)."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout} s")


async def test_file_policy_edits_reload_and_a_bad_edit_keeps_the_last_good_policy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = tmp_path / "policy.hujson"
    policy.write_text(acl("alice@", "tag:server:22"))
    events = Events()
    async with running(tmp_path / "data", extra_plugins=[events],
                       policy={"mode": "file", "path": str(policy)}) as srv:
        alice = await srv.state.create_user("alice")
        laptop, server = Machine(srv.url, "laptop"), Machine(srv.url, "server")
        await laptop.join((await srv.state.create_preauth_key(alice))[1])
        await server.join((await srv.state.create_preauth_key(None, tags=["tag:server"]))[1])
        stream = server.stream()
        first = await stream.__anext__()
        assert filter_ports(first["PacketFilter"]) == {(22, 22)}

        policy.write_text(acl("alice@", "tag:server:443,8443"))
        assert filter_ports(await next_filter(stream)) == {(443, 443), (8443, 8443)}
        assert len(events.of("policy.reload")) == 1

        caplog.set_level(logging.ERROR, logger="headscale_core.server.app")
        good = policy.read_text()
        policy.write_text(acl("alice@", "tag:nope:22"))
        await wait_for(lambda: events.of("policy.reload_failed"), "policy.reload_failed")
        [failed] = events.of("policy.reload_failed")
        assert failed.details["reason"] == 'acls[0].dst[0]: dst=tag not found: "tag:nope"'
        assert 'keeping the last good policy: acls[0].dst[0]: dst=tag not found: "tag:nope"' in caplog.text
        assert srv.state.policy.text == good
        await no_filter_within(stream, 0.5)

        # A file that cannot be read is a failed reload too, not an empty (allow-all) policy.
        policy.unlink()
        await wait_for(lambda: len(events.of("policy.reload_failed")) == 2, "second policy.reload_failed")
        assert "cannot read policy.path" in events.of("policy.reload_failed")[1].details["reason"]
        assert srv.state.policy.text == good and not srv.state.policy.allow_all

        # Bytes that are not text are refused the same way, and the watcher keeps watching.
        policy.write_bytes(b'{"acls": [\xff]}')
        await wait_for(lambda: len(events.of("policy.reload_failed")) == 3, "third policy.reload_failed")
        assert "is not UTF-8 text" in events.of("policy.reload_failed")[2].details["reason"]
        policy.write_text(acl("alice@", "tag:server:22"))
        assert filter_ports(await next_filter(stream)) == {(22, 22)}
        await stream.aclose()
        for machine in (laptop, server):
            await machine.client.close()


async def test_advertised_routes_covered_by_auto_approvers_are_approved(tmp_path: Path) -> None:
    async with running(tmp_path, policy={"mode": "database"}) as srv:
        await srv.state.set_policy(json.dumps({
            "tagOwners": {"tag:router": ["alice@"]},
            "acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]}],
            "autoApprovers": {"routes": {"10.20.0.0/16": ["tag:router"]}, "exitNode": ["tag:exit"]},
        }))
        alice = await srv.state.create_user("alice")
        laptop, router = Machine(srv.url, "laptop"), Machine(srv.url, "router")
        await laptop.join((await srv.state.create_preauth_key(alice))[1])
        await router.join((await srv.state.create_preauth_key(None, tags=["tag:router"]))[1])
        watching = laptop.stream()
        await watching.__anext__()
        # Inside the approved prefix: approved. Outside it, and an exit route nobody may approve: not.
        advertising = router.stream(RoutableIPs=["10.20.30.0/24", "192.168.7.0/24", "0.0.0.0/0", "::/0"])
        await advertising.__anext__()
        router_id = srv.state.store.by_node_key(str(router.node.node_public())).id
        await wait_for(lambda: srv.state.node(router_id).approved_routes, "auto-approval")
        assert list(srv.state.node(router_id).approved_routes) == ["10.20.30.0/24"]
        # The laptop hears of the route on the router, and only of that one.
        async with asyncio.timeout(10):
            async for message in watching:
                peers = [p for p in message.get("PeersChanged") or [] if p["ID"] == router_id]
                if peers and "10.20.30.0/24" in peers[0]["AllowedIPs"]:
                    assert "192.168.7.0/24" not in peers[0]["AllowedIPs"]
                    assert peers[0]["PrimaryRoutes"] == ["10.20.30.0/24"]
                    break
            else:
                raise AssertionError("the laptop's map stream ended before the route arrived")
        # Full maps splice each peer's cached JSON; it must say what the dict path says, for a
        # viewer that sees the route (viewer-specific AllowedIPs) and one that is the router.
        mapper = srv.ctx.extras["mapper"]
        for viewer in (srv.state.store.by_node_key(str(laptop.node.node_public())).id, router_id):
            frame, _, _ = mapper.full_map_frame(viewer)
            spliced = json.loads(decompress_frames(zstandard.ZstdDecompressor(), frame[4:]))
            whole = mapper.full_map(viewer)[0]
            for message in (spliced, whole):
                message.pop("ControlTime")
            assert spliced == whole
        for stream in (watching, advertising):
            await stream.aclose()
        for machine in (laptop, router):
            await machine.client.close()
