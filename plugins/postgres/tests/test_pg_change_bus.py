"""Two server instances on one PostgreSQL database see each other's changes (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from headscale_postgres.bus import MAX_PAYLOAD, PostgresChangeBus, notify_payloads
from headscale_postgres.testing import PostgresCluster

from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.simnode import next_message, wait_for


async def test_node_registered_on_a_appears_in_b_store_and_b_map_stream(
        pg_database_config: dict[str, object], tmp_path: Path) -> None:
    async with running(tmp_path / "a", database=pg_database_config) as a, \
            running(tmp_path / "b", database=pg_database_config) as b:
        assert isinstance(b.ctx.extras["change_bus"], PostgresChangeBus)
        alice = await a.state.create_user("alice")
        await wait_for(lambda: alice.id in b.state.store.users)
        _, key = await a.state.create_preauth_key(alice, reusable=True)

        watcher = Machine(b.url, "watcher")  # homed on B
        await watcher.connect()
        assert (await watcher.register(key))["MachineAuthorized"] is True
        stream = watcher.client.map_stream(watcher.map_request())
        first = await next_message(stream)
        assert first.get("Peers") in (None, [])

        newcomer = Machine(a.url, "newcomer")  # registers on A
        await newcomer.connect()
        answer = await newcomer.register(key)
        assert answer["MachineAuthorized"] is True
        node_a = a.state.store.by_node_key(str(newcomer.node.node_public()))
        await wait_for(lambda: node_a.id in b.state.store.nodes)
        assert b.state.store.nodes[node_a.id].ipv4 == node_a.ipv4

        msg = await next_message(stream)
        while node_a.id not in {p["ID"] for p in msg.get("PeersChanged") or []}:
            msg = await next_message(stream)
        peer = next(p for p in msg["PeersChanged"] if p["ID"] == node_a.id)
        assert peer["Name"] == "newcomer.tailnet.test."
        assert peer["Key"] == str(newcomer.node.node_public())

        # B must not hand out the address A just used
        assert b.state.allocate_addresses()[0] != node_a.ipv4

        # a rename on B reaches A; a deletion on A reaches B's stream as a removal
        await b.state.rename_node(b.state.node(node_a.id), "renamed")
        await wait_for(lambda: a.state.node(node_a.id).given_name == "renamed")
        await a.state.delete_node(a.state.node(node_a.id))
        msg = await next_message(stream)
        while node_a.id not in (msg.get("PeersRemoved") or []):
            msg = await next_message(stream)
        assert node_a.id not in b.state.store.nodes
        await watcher.close()
        await newcomer.close()


async def test_endpoints_written_behind_reach_the_other_instance(
        pg_database_config: dict[str, object], tmp_path: Path) -> None:
    async with running(tmp_path / "a", database=pg_database_config) as a, \
            running(tmp_path / "b", database=pg_database_config) as b:
        user = await a.state.create_user("carol")
        _, key = await a.state.create_preauth_key(user)
        m = Machine(a.url, "mover")
        await m.connect()
        await m.register(key)
        node = a.state.store.by_node_key(str(m.node.node_public()))
        await wait_for(lambda: node.id in b.state.store.nodes)
        await m.client.lite_update(m.node.node_public(), endpoints=["127.0.0.1:41641"])
        await wait_for(lambda: b.state.store.nodes[node.id].endpoints == ("127.0.0.1:41641",))
        await m.close()


async def test_missed_notifications_are_repaired_by_resync_after_reconnect(
        own_pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    settings = own_pg_cluster.create_database()
    database = own_pg_cluster.database_config(settings)
    async with running(tmp_path / "b", database=database) as b:
        bus: PostgresChangeBus = b.ctx.extras["change_bus"]
        resyncs = bus.resyncs
        # A write nobody notifies (as if B's LISTEN was down when it happened) ...
        own_pg_cluster.psql("INSERT INTO users (name, display_name, email, provider, profile_pic_url, groups, "
                            "created_at, updated_at) VALUES ('erin', '', '', '', '', '[]', now(), now())",
                            settings.name)
        await asyncio.sleep(0.3)
        assert "erin" not in {u.name for u in b.state.users()}
        # ... is picked up when the LISTEN connection is lost and comes back.
        own_pg_cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
        await wait_for(lambda: bus.resyncs > resyncs, 15)
        await wait_for(lambda: "erin" in {u.name for u in b.state.users()}, 5)


def test_publications_are_merged_and_split_to_fit_notify() -> None:
    many = [{"origin": "a", "changes": [["n", i, 1]]} for i in range(2000)]
    payloads = notify_payloads(many)
    assert 1 < len(payloads) < 100, "merged into a few notifications"
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    merged = [c for p in payloads for c in json.loads(p)["changes"]]
    assert merged == [["n", i, 1] for i in range(2000)], "nothing lost, order kept"
    huge = {"origin": "a", "changes": [["p", 1, ["x" * 9000]]]}
    assert [json.loads(p) for p in notify_payloads([huge])] == [{"origin": "a", "resync": True}]
