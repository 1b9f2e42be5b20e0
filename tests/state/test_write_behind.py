"""The write-behind of soft node changes (endpoints, disco key, last seen): each flush writes
the columns that changed, and what it writes is what a restart reads back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from headscale_core.state.model import Node
from headscale_core.storage import repository as repo
from headscale_core.testing.inprocess import running


async def test_a_flush_writes_the_changed_columns_and_a_reload_reads_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[list[set[str]]] = []
    real = repo.update_nodes

    async def spy(s: Any, nodes: Any, now: datetime, fields: Any = None) -> None:
        written.append([set(f) for f in fields])
        await real(s, nodes, now, fields)

    monkeypatch.setattr(repo, "update_nodes", spy)
    async with running(tmp_path) as srv:
        state = srv.state
        user = await state.create_user("alice")
        v4, v6 = state.allocate_addresses()
        node = await state.insert_node(Node(id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "1" * 64,
                                            given_name="laptop", user_id=user.id, ipv4=v4, ipv6=v6,
                                            host_info={"OS": "linux", "Hostname": "laptop"}), actor="test")
        await state.session_started(node)  # last seen only
        await state.flush()
        moved = state.node(node.id).replace(endpoints=("192.0.2.7:41641",), disco_key="discokey:" + "2" * 64)
        await state.update_soft(moved)
        await state.update_soft(state.node(node.id).replace(host_info={"OS": "linux", "Hostname": "laptop2"}))
        await state.flush()
        assert written == [[{"last_seen"}], [{"endpoints", "disco_key", "host_info"}]]
        async with state.storage.transaction() as s:
            [stored] = await repo.all_nodes(s)
        assert stored.endpoints == ("192.0.2.7:41641",) and stored.disco_key == "discokey:" + "2" * 64
        assert stored.host_info == {"OS": "linux", "Hostname": "laptop2"}
        assert stored.last_seen is not None and stored.last_seen <= datetime.now(UTC).replace(tzinfo=stored.last_seen.tzinfo)
