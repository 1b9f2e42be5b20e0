"""Change fan-out between two instances, without PostgreSQL: two in-process servers share one
SQLite file and a change bus that hands each publication to the other (what the postgres
plugin does with LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from headscale_core.state import fanout
from headscale_core.state.changes import (
    NodeChanged,
    NodePatched,
    NodeRemoved,
    PolicyChanged,
    SelfChanged,
    UserChanged,
)
from headscale_core.state.model import Node
from headscale_core.testing.inprocess import running


class PairedBus:
    """Publications go to the partner's subscribers, as NOTIFY would deliver them."""

    def __init__(self) -> None:
        self.partner: PairedBus | None = None
        self.subscribers: list[Callable[[Mapping[str, Any]], Awaitable[None]]] = []
        self.published: list[Mapping[str, Any]] = []

    async def publish(self, change: Mapping[str, Any]) -> None:
        self.published.append(change)
        assert self.partner is not None
        for callback in self.partner.subscribers:
            await callback(change)

    def subscribe(self, callback: Callable[[Mapping[str, Any]], Awaitable[None]]) -> None:
        self.subscribers.append(callback)

    async def aclose(self) -> None:
        self.subscribers.clear()


def test_descriptors_round_trip() -> None:
    changes = [NodePatched(3, frozenset({"Endpoints", "Online"})), NodeChanged(4, topology=True), NodeRemoved(5),
               UserChanged(1), SelfChanged(4), PolicyChanged()]
    assert fanout.decode(fanout.encode(changes)) == changes
    assert fanout.decode([["x", 1]]) == [], "an unknown kind from a newer release is skipped"


async def test_two_instances_on_one_database_follow_each_other(tmp_path: Path) -> None:
    shared = {"database": {"sqlite": {"path": str(tmp_path / "shared.sqlite")}}, "policy": {"mode": "database"}}
    async with running(tmp_path / "a", **shared) as a, running(tmp_path / "b", **shared) as b:
        bus_a, bus_b = PairedBus(), PairedBus()
        bus_a.partner, bus_b.partner = bus_b, bus_a
        a.state.attach_bus(bus_a)
        b.state.attach_bus(bus_b)
        seen_by_b: list[Any] = []
        b.state.on_change(lambda changes: seen_by_b.extend(changes))

        alice = await a.state.create_user("alice")
        assert b.state.user("alice") == alice
        assert UserChanged(alice.id) in seen_by_b

        await b.state.update_user(b.state.user(alice.id), display_name="Alice")
        assert a.state.user(alice.id).display_name == "Alice"

        await a.state.set_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
        assert b.state.policy.text == a.state.policy.text

        v4, v6 = a.state.allocate_addresses()
        node = await a.state.insert_node(Node(
            id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64, disco_key="",
            given_name="one", hostname="one", user_id=alice.id, ipv4=v4, ipv6=v6), actor="test")
        assert b.state.node(node.id).ipv4 == v4
        assert v4 not in b.state.allocate_addresses(), "B must not hand out A's address"

        # written behind: published only after the row is written, and then B re-reads it
        await a.state.update_soft(node.replace(endpoints=("192.0.2.1:41641",)),
                                  NodePatched(node.id, frozenset({"Endpoints"})))
        assert b.state.node(node.id).endpoints == ()
        await asyncio.sleep(0.8)
        assert b.state.node(node.id).endpoints == ("192.0.2.1:41641",)

        await b.state.delete_node(b.state.node(node.id))
        assert node.id not in a.state.store.nodes
        assert all(m["origin"] == a.state.instance_id for m in bus_a.published)


async def test_resync_repairs_a_missed_change(tmp_path: Path) -> None:
    shared = {"database": {"sqlite": {"path": str(tmp_path / "shared.sqlite")}}}
    async with running(tmp_path / "a", **shared) as a, running(tmp_path / "b", **shared) as b:
        bob = await a.state.create_user("bob")  # local bus: B hears nothing
        assert bob.id not in b.state.store.users
        await b.state.apply_remote({"resync": True})
        assert b.state.user("bob") == bob
        await a.state.delete_user(bob)
        await b.state.apply_remote({"resync": True})
        assert bob.id not in b.state.store.users
