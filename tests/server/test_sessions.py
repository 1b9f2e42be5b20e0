"""Map-session behaviour: batching, stream replacement, online state, key rotation, logout,
expiry and DERP map refresh — all through the real ts2021 path on loopback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from headscale_core.protocol.keys import PrivateKey
from headscale_core.server.app import refresh_derp_map
from headscale_core.state.changes import DERPMapChanged, NodePatched
from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode as Sim
from headscale_core.testing.simnode import drain
from headscale_core.testing.tsclient import TSClient


async def user_key(state: Any, **kw: Any) -> str:
    user = await state.create_user("alice")
    return (await state.create_preauth_key(user, reusable=True, **kw))[1]


async def test_registration_burst_is_coalesced_not_full_maps(tmp_path: Path) -> None:
    async with running(tmp_path, tuning={"batch_change_delay": "250ms"}) as srv:
        key = await user_key(srv.state)
        watcher = Sim(srv.url, "watcher")
        await watcher.join(key)
        stream = watcher.client.map_stream(watcher.map_request())
        first = await stream.__anext__()
        assert "Peers" not in first
        sims = [Sim(srv.url, f"n{i}") for i in range(40)]
        await asyncio.gather(*(s.join(key) for s in sims))
        messages = await drain(stream)
        seen = {p["ID"] for m in messages for p in m.get("PeersChanged") or []}
        assert len(seen) == 40
        # 40 registrations: coalesced into far fewer deltas (how few depends on how fast this
        # machine registers them), never a full map
        assert len(messages) <= 10, f"{len(messages)} messages for 40 registrations"
        assert not any("Peers" in m for m in messages)
        for s in [watcher, *sims]:
            await s.client.close()


async def test_a_change_after_a_quiet_spell_goes_out_at_once_and_the_next_waits_a_window(tmp_path: Path) -> None:
    # Leading edge: the first change after quiet costs no batching delay; one that follows
    # within the window waits for the rest of it, so fan-outs stay a window apart.
    async with running(tmp_path, tuning={"batch_change_delay": "1500ms"}) as srv:
        key = await user_key(srv.state)
        a, b = Sim(srv.url, "a"), Sim(srv.url, "b")
        await a.join(key)
        await b.join(key)
        stream = a.client.map_stream(a.map_request())
        await stream.__anext__()
        await drain(stream, 1.8)  # b's registration, a window apart from anything before
        loop = asyncio.get_running_loop()
        arrivals: list[float] = []
        for port in (41001, 41002):
            sent = loop.time()
            await b.client.lite_update(str(b.node.node_public()), endpoints=[f"192.0.2.7:{port}"])
            while True:
                message = await asyncio.wait_for(stream.__anext__(), 5)
                patches = message.get("PeersChangedPatch") or []
                if any(f"192.0.2.7:{port}" in (p.get("Endpoints") or []) for p in patches):
                    arrivals.append(loop.time() - sent)
                    break
        assert arrivals[0] < 0.75, f"isolated change waited {arrivals[0]:.3f} s"
        assert arrivals[1] > 0.75, f"second change within the window went out after {arrivals[1]:.3f} s"
        for s in (a, b):
            await s.client.close()


async def test_newer_stream_replaces_the_old_one_and_online_state_follows(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = await user_key(srv.state)
        a, b = Sim(srv.url, "a"), Sim(srv.url, "b")
        await a.join(key)
        await b.join(key)
        stream_a = a.client.map_stream(a.map_request())
        await stream_a.__anext__()
        old = b.client.map_stream(b.map_request())
        await old.__anext__()
        b_id = srv.state.store.by_node_key(str(b.node.node_public())).id
        assert srv.state.is_online(b_id)
        second = await TSClient.connect(srv.url, machine_private=b.machine)
        new = second.map_stream(b.map_request())
        full = await new.__anext__()
        assert full["Node"]["ID"] == b_id
        # the old stream ends; the node stays online because the new one holds it
        ended = False
        try:
            while True:
                await asyncio.wait_for(old.__anext__(), 3)
        except StopAsyncIteration:
            ended = True
        except Exception:
            ended = True
        assert ended
        assert srv.state.is_online(b_id)
        await second.close()
        # the node goes offline; its peer hears Online false with LastSeen
        for _ in range(20):
            msgs = await drain(stream_a, 0.3)
            patches = [p for m in msgs for p in m.get("PeersChangedPatch") or [] if p["NodeID"] == b_id]
            if any(p.get("Online") is False for p in patches):
                assert any("LastSeen" in p for p in patches)
                break
        else:
            raise AssertionError("peer never heard that b went offline")
        await a.client.close()
        await b.client.close()


async def test_key_rotation_logout_and_expiry(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = await user_key(srv.state)
        m = Sim(srv.url, "rot")
        await m.join(key)
        node = srv.state.store.by_node_key(str(m.node.node_public()))
        # rotation: new node key with OldNodeKey and fresh auth keeps the node and addresses
        new_key = PrivateKey.generate()
        answer = await m.client.register(new_key.node_public(), auth_key=key, old_node_key=m.node.node_public())
        assert answer["MachineAuthorized"] is True
        rotated = srv.state.node(node.id)
        assert rotated.node_key == str(new_key.node_public()) and rotated.ipv4 == node.ipv4
        m.node = new_key
        # logout: expiry in the past
        answer = await m.client.register(new_key.node_public(), expiry="1970-01-01T00:02:03Z")
        assert answer["NodeKeyExpired"] is True
        assert srv.state.node(node.id).is_expired(datetime.now(UTC))
        # the expired key re-registering without auth is told to rotate
        answer = await m.client.register(new_key.node_public())
        assert answer == {"NodeKeyExpired": True}
        await m.client.close()


async def test_default_node_expiry_and_hostinfo_changes(tmp_path: Path) -> None:
    async with running(tmp_path, node={"expiry": "1h"}) as srv:
        key = await user_key(srv.state)
        a, b = Sim(srv.url, "a"), Sim(srv.url, "b")
        await a.join(key)
        await b.join(key)
        node = srv.state.store.by_node_key(str(b.node.node_public()))
        assert node.expiry is not None
        assert timedelta(minutes=59) < node.expiry - datetime.now(UTC) <= timedelta(hours=1)
        stream_a = a.client.map_stream(a.map_request())
        await stream_a.__anext__()
        await drain(stream_a)
        await b.client.lite_update(b.node.node_public(), hostinfo={"Hostname": "b", "OS": "linux",
                                                                   "Services": [{"Proto": "peerapi4", "Port": 1}]})
        msgs = await drain(stream_a)
        changed = [p for msg in msgs for p in msg.get("PeersChanged") or []]
        assert changed and changed[-1]["Hostinfo"]["Services"][0]["Port"] == 1
        await b.client.lite_update(b.node.node_public(), hostinfo={
            "Hostname": "b", "OS": "linux", "Services": [{"Proto": "peerapi4", "Port": 1}],
            "NetInfo": {"PreferredDERP": 901}})
        msgs = await drain(stream_a)
        patches = [p for msg in msgs for p in msg.get("PeersChangedPatch") or []]
        assert patches == [{"NodeID": node.id, "DERPRegion": 901}]
        await a.client.close()
        await b.client.close()


async def test_derp_map_refresh_reaches_streams(tmp_path: Path) -> None:
    path = tmp_path / "derp.json"
    path.write_text('{"Regions": {"900": {"RegionID": 900, "RegionCode": "a", "Nodes": []}}}')
    async with running(tmp_path / "srv", derp={"paths": [str(path)], "urls": [], "server": {"enabled": False}}) as srv:
        key = await user_key(srv.state)
        a = Sim(srv.url, "a")
        await a.join(key)
        stream = a.client.map_stream(a.map_request())
        first = await stream.__anext__()
        assert list(first["DERPMap"]["Regions"]) == ["900"]
        path.write_text('{"Regions": {"902": {"RegionID": 902, "RegionCode": "b", "Nodes": []}}}')
        assert await refresh_derp_map(srv.ctx)
        await srv.state.emit(DERPMapChanged())
        msgs = await drain(stream)
        assert [list(m["DERPMap"]["Regions"]) for m in msgs if "DERPMap" in m] == [["902"]]
        await a.client.close()


async def test_stopping_the_server_ends_client_connections(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = await user_key(srv.state)
        a = Sim(srv.url, "a")
        await a.join(key)
        stream = a.client.map_stream(a.map_request())
        await stream.__anext__()
    # the server is gone: the stream must end (a client then reconnects), not hang
    ended = False
    try:
        while True:
            await asyncio.wait_for(stream.__anext__(), 5)
    except (StopAsyncIteration, ConnectionError, Exception) as exc:
        ended = not isinstance(exc, TimeoutError)
    assert ended
    await a.client.close()


async def test_keepalives_go_out_only_while_a_stream_is_otherwise_quiet(tmp_path: Path) -> None:
    async with running(tmp_path, tuning={"keepalive_interval": "1s", "batch_change_delay": "10ms"}) as srv:
        key = await user_key(srv.state)
        a, b = Sim(srv.url, "a"), Sim(srv.url, "b")
        await a.join(key)
        await b.join(key)
        stream = a.client.map_stream(a.map_request())
        await stream.__anext__()
        await drain(stream, 0.3)  # b's registration may still arrive as a delta
        loop = asyncio.get_running_loop()
        started = loop.time()
        quiet = [await asyncio.wait_for(stream.__anext__(), 3.0) for _ in range(2)]
        assert [m.pop("KeepAlive") for m in quiet] == [True, True]
        assert all(set(m) == {"ControlTime"} and m["ControlTime"].endswith("Z") for m in quiet), quiet
        assert 1.0 <= loop.time() - started <= 2 * 1.2 + 0.5  # each within interval + jitter
        # A busy stream (b's Hostinfo changes every 0.3 s) gets its deltas and no keep-alives.
        got: list[dict[str, Any]] = []

        async def reader() -> None:
            async for message in stream:
                got.append(message)

        task = asyncio.create_task(reader())
        for i in range(8):
            await b.client.lite_update(str(b.node.node_public()), hostinfo={"Hostname": "b", "OSVersion": f"v{i}"})
            await asyncio.sleep(0.3)
        task.cancel()
        assert len([m for m in got if "PeersChanged" in m]) >= 6
        assert not [m for m in got if m.get("KeepAlive")], got
        for s in (a, b):
            await s.client.close()


async def test_a_patch_reaches_exactly_the_sessions_that_see_the_node(tmp_path: Path) -> None:
    async with running(tmp_path, policy={"mode": "database"}) as srv:
        await srv.state.set_policy(json.dumps({"acls": [
            {"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]},
            {"action": "accept", "src": ["bob@"], "dst": ["bob@:*"]},
        ]}))
        alice, bob = await srv.state.create_user("alice"), await srv.state.create_user("bob")
        a, b, c = Sim(srv.url, "a"), Sim(srv.url, "b"), Sim(srv.url, "c")
        await a.join((await srv.state.create_preauth_key(alice, reusable=True))[1])
        await b.join((await srv.state.create_preauth_key(alice, reusable=True))[1])
        await c.join((await srv.state.create_preauth_key(bob, reusable=True))[1])
        streams = {s.name: s.client.map_stream(s.map_request()) for s in (b, c)}
        for stream in streams.values():
            await stream.__anext__()
            await drain(stream)
        a_id = srv.state.store.by_node_key(str(a.node.node_public())).id
        await a.client.lite_update(str(a.node.node_public()), endpoints=["192.0.2.1:41641"])
        heard_b, heard_c = await drain(streams["b"], 1.0), await drain(streams["c"], 0.3)
        patches = [p for m in heard_b for p in m.get("PeersChangedPatch") or []]
        assert {p["NodeID"] for p in patches} == {a_id}
        assert patches[-1]["Endpoints"] == ["192.0.2.1:41641"]
        assert not [m for m in heard_c if "PeersChangedPatch" in m or "PeersChanged" in m], heard_c
        for s in (a, b, c):
            await s.client.close()


async def test_patches_of_several_peers_in_one_batch_reach_each_session_as_far_as_it_sees(tmp_path: Path) -> None:
    """A burst (several peers' endpoints in one batching window): one message per session, with
    the patches of exactly the peers that session sees."""
    async with running(tmp_path, policy={"mode": "database"}) as srv:
        await srv.state.set_policy(json.dumps({"acls": [
            {"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]},
            {"action": "accept", "src": ["bob@"], "dst": ["bob@:*"]},
        ]}))
        keys = {}
        for name in ("alice", "bob"):
            keys[name] = (await srv.state.create_preauth_key(await srv.state.create_user(name), reusable=True))[1]
        sims = {name: Sim(srv.url, name) for name in ("a1", "a2", "a3", "a4", "b1", "b2")}
        for name, sim in sims.items():
            await sim.join(keys["alice" if name.startswith("a") else "bob"])
        watchers = ("a3", "a4", "b2")
        streams = {name: sims[name].client.map_stream(sims[name].map_request()) for name in watchers}
        for stream in streams.values():
            await stream.__anext__()
            await drain(stream)
        ids = {name: srv.state.store.by_node_key(str(sim.node.node_public())).id for name, sim in sims.items()}
        for k, name in enumerate(("a1", "a2", "b1")):  # no await that yields: one batch
            node = srv.state.store.nodes[ids[name]]
            await srv.state.update_soft(node.replace(endpoints=(f"192.0.2.{k + 1}:41641",)),
                                        NodePatched(node.id, frozenset({"Endpoints"})))
        heard = {name: await drain(streams[name], 1.0) for name in watchers}
        for name, expected in (("a3", {"a1": "192.0.2.1", "a2": "192.0.2.2"}), ("a4", {"a1": "192.0.2.1", "a2": "192.0.2.2"}),
                               ("b2", {"b1": "192.0.2.3"})):
            messages = [m for m in heard[name] if "PeersChangedPatch" in m]
            assert len(messages) == 1, (name, heard[name])
            got = {p["NodeID"]: p["Endpoints"] for p in messages[0]["PeersChangedPatch"]}
            assert got == {ids[peer]: [f"{ip}:41641"] for peer, ip in expected.items()}, name
        for sim in sims.values():
            await sim.client.close()
