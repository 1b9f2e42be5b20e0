"""The load generator's peer table applies each kind of map delta as tailscaled does."""

from __future__ import annotations

from typing import Any

from benchmarks.loadgen.peertable import PeerTable


def node(node_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "ID": node_id,
        "Key": f"nodekey:{node_id:064x}",
        "DiscoKey": f"discokey:{node_id:064x}",
        "Endpoints": [f"192.0.2.{node_id}:41641"],
        "Addresses": [f"100.64.0.{node_id}/32"],
        "HomeDERP": 1,
        "Online": True,
        "Hostinfo": {"OSVersion": "Debian 13"},
        **fields,
    }


def table_with(*ids: int) -> PeerTable:
    table = PeerTable()
    table.apply({"Node": node(99), "Peers": [node(i) for i in ids]})
    return table


def test_full_map_replaces_every_peer() -> None:
    table = table_with(1, 2, 3)
    touched = table.apply({"Peers": [node(2), node(4)]})
    assert set(table.peers) == {2, 4}
    assert touched == {1, 3, 4}
    assert table.full_maps == 2


def test_first_map_without_peers_leaves_an_empty_table() -> None:
    table = PeerTable()
    table.apply({"Node": node(1), "PacketFilter": []})
    assert table.peers == {}
    assert table.self_node is not None and table.self_node.ID == 1


def test_peers_changed_replaces_the_whole_node() -> None:
    table = table_with(1, 2)
    touched = table.apply({"PeersChanged": [node(2, Endpoints=["198.51.100.2:1"], Hostinfo={"OSVersion": "x"})]})
    assert touched == {2}
    assert table.peers[2].endpoints == ("198.51.100.2:1",)
    assert table.peers[2].os_version == "x"
    assert table.peers[1].endpoints == ("192.0.2.1:41641",)


def test_peers_changed_adds_an_unknown_node() -> None:
    table = table_with(1)
    table.apply({"PeersChanged": [node(5)]})
    assert set(table.peers) == {1, 5}


def test_peers_removed_drops_known_and_ignores_unknown() -> None:
    table = table_with(1, 2, 3)
    touched = table.apply({"PeersRemoved": [2, 7]})
    assert set(table.peers) == {1, 3}
    assert touched == {2}


def test_patch_changes_only_the_fields_it_names() -> None:
    table = table_with(1, 2)
    touched = table.apply({"PeersChangedPatch": [
        {"NodeID": 1, "Endpoints": ["203.0.113.1:9"], "DERPRegion": 7},
        {"NodeID": 2, "DiscoKey": "discokey:" + "ab" * 32, "Online": False},
    ]})
    assert touched == {1, 2}
    one, two = table.peers[1], table.peers[2]
    assert (one.endpoints, one.home_derp, one.online) == (("203.0.113.1:9",), 7, True)
    assert one.disco_key == f"discokey:{1:064x}"
    assert (two.disco_key, two.online, two.endpoints) == ("discokey:" + "ab" * 32, False, ("192.0.2.2:41641",))


def test_patch_for_an_unknown_peer_is_ignored() -> None:
    table = table_with(1)
    assert table.apply({"PeersChangedPatch": [{"NodeID": 8, "Endpoints": ["203.0.113.8:1"]}]}) == set()
    assert set(table.peers) == {1}


def test_online_change_map() -> None:
    table = table_with(1, 2)
    table.apply({"OnlineChange": {"2": False}})
    assert table.peers[2].online is False
    assert table.peers[1].online is True


def test_legacy_derp_field() -> None:
    table = PeerTable()
    table.apply({"Peers": [node(1, HomeDERP=0, DERP="127.3.3.40:12")]})
    assert table.peers[1].home_derp == 12


def test_one_message_with_every_kind_applies_in_protocol_order() -> None:
    table = table_with(1, 2, 3)
    table.apply({
        "PeersChanged": [node(4)],
        "PeersRemoved": [3],
        "PeersChangedPatch": [{"NodeID": 4, "Endpoints": ["203.0.113.4:4"]}],
        "PacketFilter": [{"SrcIPs": ["*"]}],
    })
    assert set(table.peers) == {1, 2, 4}
    assert table.peers[4].endpoints == ("203.0.113.4:4",)
    assert table.packet_filter == [{"SrcIPs": ["*"]}]
    assert table.deltas == 1
