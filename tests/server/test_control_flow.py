"""The control protocol end to end in-process: ts2021 client -> Noise -> HTTP/2 -> handlers
-> state -> mapper -> map stream, over real loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from headscale_core.protocol.keys import PrivateKey
from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.simnode import next_message
from headscale_core.testing.tsclient import ControlError, TSClient


async def setup_user_key(state: Any, **kw: Any) -> str:
    user = await state.create_user("alice")
    _, key = await state.create_preauth_key(user, reusable=True, **kw)
    return key


async def test_two_nodes_register_and_see_each_other(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = await setup_user_key(srv.state)
        a, b = Machine(srv.url, "alpha"), Machine(srv.url, "beta")
        for m in (a, b):
            await m.connect()
            answer = await m.client.register(m.node.node_public(), auth_key=key, hostinfo={"Hostname": m.name})
            assert answer["MachineAuthorized"] is True
            assert answer["Login"]["LoginName"] == "alice@"
        stream_a = a.client.map_stream(a.map_request())
        first = await next_message(stream_a)
        assert first["Node"]["Name"] == "alpha.tailnet.test."
        assert first["Node"]["Addresses"] == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
        assert first["Node"]["MachineAuthorized"] is True
        assert [p["Name"] for p in first["Peers"]] == ["beta.tailnet.test."]
        assert first["PacketFilter"][0]["SrcIPs"] == ["*"]
        assert first["Debug"] == {"DisableLogTail": True}

        # beta connects: alpha hears it come online with its disco key
        stream_b = b.client.map_stream(b.map_request())
        first_b = await next_message(stream_b)
        assert [p["Name"] for p in first_b["Peers"]] == ["alpha.tailnet.test."]
        beta_id, beta_disco = first_b["Node"]["ID"], str(b.disco.disco_public())
        disco_seen = None
        for _ in range(5):  # a delta from beta's registration may still be in flight
            delta = await next_message(stream_a)
            assert "Node" not in delta, "a node's own map request must not echo its node back"
            changed = {p["ID"]: p for p in delta.get("PeersChanged") or []}
            patch = {p["NodeID"]: p for p in delta.get("PeersChangedPatch") or []}
            disco_seen = (changed.get(beta_id) or patch.get(beta_id) or {}).get("DiscoKey")
            if disco_seen:
                break
        assert disco_seen == beta_disco

        # a lite update with new endpoints reaches alpha as a patch
        await b.client.lite_update(b.node.node_public(), endpoints=["127.0.0.1:41641"])
        msg = await next_message(stream_a)
        while "PeersChangedPatch" not in msg:
            msg = await next_message(stream_a)
        assert msg["PeersChangedPatch"][0]["Endpoints"] == ["127.0.0.1:41641"]
        # a patch-only message leaves ControlTime out (keep-alives and full maps carry it)
        assert set(msg) == {"PeersChangedPatch"}, msg

        # deleting beta removes it from alpha's map
        await srv.state.delete_node(srv.state.store.by_node_key(str(b.node.node_public())))
        msg = await next_message(stream_a)
        while "PeersRemoved" not in msg:
            msg = await next_message(stream_a)
        assert msg["PeersRemoved"] == [first_b["Node"]["ID"]]
        assert msg["ControlTime"].endswith("Z"), "every other message carries ControlTime"
        for m in (a, b):
            await m.client.close()


async def test_restart_reregisters_without_auth_and_bad_keys_fail(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        key = await setup_user_key(srv.state)
        m = Machine(srv.url, "gamma")
        await m.connect()
        await m.client.register(m.node.node_public(), auth_key=key)
        again = await m.client.register(m.node.node_public())
        assert again["MachineAuthorized"] is True and "AuthURL" not in again
        bad = await m.client.register(PrivateKey.generate().node_public(), auth_key="hskey-auth-000000000000-nope")
        assert "invalid pre-auth key" in bad["Error"]
        # another machine cannot use gamma's node key
        thief = Machine(srv.url, "thief")
        await thief.connect()
        stolen = await thief.client.register(m.node.node_public())
        assert stolen["Error"] == "node exists with a different machine key"
        with pytest.raises(ControlError) as info:
            async for _ in thief.client.map_stream(m.map_request()):
                break
        assert info.value.status == 404
        await m.client.close()
        await thief.client.close()


async def test_interactive_registration_completes_after_approval(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        user = await srv.state.create_user("bob")
        m = Machine(srv.url, "delta")
        await m.connect()
        answer = await m.client.register(m.node.node_public())
        url = answer["AuthURL"]
        assert url.startswith(srv.url + "/register/")
        waiting = asyncio.create_task(m.client.register(m.node.node_public(), followup=url))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await srv.ctx.extras["registrar"].approve(url.rsplit("/", 1)[1], user)
        done = await asyncio.wait_for(waiting, 5)
        assert done["MachineAuthorized"] is True and done["Login"]["LoginName"] == "bob@"
        await m.client.close()


async def test_old_client_refused_with_clear_message(tmp_path: Path) -> None:
    async with running(tmp_path) as srv:
        m = Machine(srv.url, "old")
        m.client = await TSClient.connect(srv.url, machine_private=m.machine, capver=100)
        with pytest.raises(ControlError) as info:
            await m.client.register(m.node.node_public())
        assert info.value.status == 400 and b"1.80" in info.value.body
        await m.client.close()
