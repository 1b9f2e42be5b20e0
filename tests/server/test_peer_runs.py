"""Full maps from ``PeerRuns``: runs of peers shared between viewers are made again exactly when
one of their peers changed, came online or went offline, expired, or the policy moved on; every
viewer's full map says what the dict path (``Mapper.full_map``) says."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import zstandard

from headscale_core.mapper.fullmap import RUN_SPAN
from headscale_core.protocol.mapstream import decompress_frames
from headscale_core.state.changes import NodePatched
from headscale_core.state.model import Node
from headscale_core.testing.inprocess import running


def spliced_and_whole(mapper: Any, viewer: int) -> tuple[dict[str, Any], dict[str, Any]]:
    frame, _, ids = mapper.full_map_frame(viewer)
    spliced = json.loads(decompress_frames(zstandard.ZstdDecompressor(), frame[4:]))
    whole = mapper.full_map(viewer)[0]
    for message in (spliced, whole):
        message.pop("ControlTime")
    assert [p["ID"] for p in spliced.get("Peers", [])] == ids
    return spliced, whole


async def test_shared_runs_follow_every_change_of_their_peers(tmp_path: Path) -> None:
    async with running(tmp_path, policy={"mode": "database"}) as srv:
        state, mapper = srv.state, srv.ctx.extras["mapper"]
        user = await state.create_user("alice")
        count = 2 * RUN_SPAN + 20
        for i in range(count):
            v4, v6 = state.allocate_addresses()
            await state.insert_node(Node(id=0, machine_key=f"mkey:{i:064x}", node_key=f"nodekey:{i:064x}",
                                         given_name=f"n{i}", user_id=user.id, ipv4=v4, ipv6=v6,
                                         disco_key=f"discokey:{i:064x}"), actor="test")
        ids = sorted(state.store.nodes)
        runs = mapper.peer_runs
        for viewer in ids:
            spliced, whole = spliced_and_whole(mapper, viewer)
            assert spliced == whole and len(spliced["Peers"]) == count - 1
        # Each run is made for the first viewer outside it and for each viewer inside it (which
        # sees it without itself); every other viewer takes it as it is.
        assert runs.misses <= 3 + count and runs.hits >= 2 * count - 3 - count
        viewer, peer = ids[0], ids[RUN_SPAN + 5]

        def peer_json() -> dict[str, Any]:
            spliced, whole = spliced_and_whole(mapper, viewer)
            assert spliced == whole
            return next(p for p in spliced["Peers"] if p["ID"] == peer)

        # a peer's endpoints move (a lite update: the node is replaced in the store)
        await state.update_soft(state.node(peer).replace(endpoints=("192.0.2.1:41641",)),
                                NodePatched(peer, frozenset({"Endpoints"})))
        assert peer_json()["Endpoints"] == ["192.0.2.1:41641"]
        # it comes online, then goes offline (the online set alone changes)
        state.store.set_online(peer, True)
        assert peer_json()["Online"] is True
        state.store.set_online(peer, False)
        assert peer_json()["Online"] is False
        # its key expires while nothing touches it
        await state.update_soft(state.node(peer).replace(expiry=datetime.now(UTC) + timedelta(seconds=0.3)))
        assert not peer_json().get("Expired")
        await asyncio.sleep(0.4)
        assert peer_json().get("Expired") is True
        # the policy changes: the viewer sees only some peers now
        hidden = ids[RUN_SPAN: RUN_SPAN + 10]
        others = [state.node(i).ipv4 for i in ids if i not in hidden]
        await state.set_policy(json.dumps({"acls": [{"action": "accept", "src": others,
                                                    "dst": [f"{ip}:*" for ip in others]}]}))
        spliced, whole = spliced_and_whole(mapper, viewer)
        assert spliced == whole
        assert not {p["ID"] for p in spliced["Peers"]} & set(hidden)
