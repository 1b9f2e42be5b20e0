"""Address allocation, MagicDNS names and the DNS config clients receive."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from headscale_core.mapper.wire import dns_config
from headscale_core.state.ipalloc import AddressPoolExhausted, IPAllocator
from headscale_core.state.model import Node
from headscale_core.state.names import dns_label, unique_label, validate_given_name
from headscale_core.state.nodestore import NodeStore
from headscale_core.testing.inprocess import test_config as make_config


def test_sequential_allocation_skips_reserved_and_never_reuses_held_addresses() -> None:
    alloc = IPAllocator(ipaddress.ip_network("100.64.0.0/10"))
    first = [alloc.allocate() for _ in range(3)]
    assert first == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]
    alloc.reserve(["100.64.0.4"])
    assert alloc.allocate() == "100.64.0.5"
    alloc.release("100.64.0.2")
    # sequential allocation moves on; a freed address is reused only after wrapping around
    assert alloc.allocate() == "100.64.0.6"


def test_reserved_tailscale_addresses_are_never_handed_out() -> None:
    alloc = IPAllocator(ipaddress.ip_network("100.100.100.96/28"))
    got = {alloc.allocate() for _ in range(13)}
    assert "100.100.100.100" not in got
    with pytest.raises(AddressPoolExhausted, match="widen prefixes"):
        alloc.allocate()


def test_random_allocation_is_unique_and_in_range() -> None:
    net = ipaddress.ip_network("fd7a:115c:a1e0::/120")
    alloc = IPAllocator(net, strategy="random", seed=7)
    got = [alloc.allocate() for _ in range(200)]
    assert len(set(got)) == 200
    assert all(ipaddress.ip_address(a) in net for a in got)
    assert got != sorted(got, key=ipaddress.ip_address)


def test_dns_labels_are_sanitised_and_unique() -> None:
    assert dns_label("My Laptop.local") == "my-laptop"
    assert dns_label("___") == "node"
    assert unique_label("web", {"web", "web-1"}) == "web-2"
    assert validate_given_name("Bad_Name") is not None
    assert validate_given_name("good-name") is None


def test_the_store_keeps_the_taken_names_through_renames_and_removals() -> None:
    store = NodeStore()
    store.put(Node(id=1, machine_key="mkey:1", node_key="nodekey:1", given_name="laptop"))
    store.put(Node(id=2, machine_key="mkey:2", node_key="nodekey:2", given_name="laptop-1"))
    assert unique_label("laptop", store.given_names()) == "laptop-2"
    store.put(store.nodes[1].replace(given_name="desk"))  # renamed: its old name is free again
    assert "laptop" not in store.given_names() and "desk" in store.given_names()
    assert unique_label("laptop", store.given_names()) == "laptop"
    store.remove(2)
    assert "laptop-1" not in store.given_names()
    assert set(store.given_names()) == {"desk"}  # type: ignore[call-overload]


def test_dns_config_from_headscale_keys(tmp_path: Path) -> None:
    config = make_config(tmp_path, dns={
        "magic_dns": True, "base_domain": "ts.example.com", "override_local_dns": True,
        "nameservers": {"global": ["1.1.1.1", "https://dns.example/dns-query"],
                        "split": {"corp.example": ["10.0.0.53"]}},
        "search_domains": ["corp.example"],
        "extra_records": [{"name": "db.ts.example.com", "type": "A", "value": "100.64.0.9"}],
    })
    assert dns_config(config) == {
        "Proxied": True,
        "Domains": ["ts.example.com", "corp.example"],
        "Resolvers": [{"Addr": "1.1.1.1"}, {"Addr": "https://dns.example/dns-query"}],
        "Routes": {"corp.example": [{"Addr": "10.0.0.53"}]},
        "ExtraRecords": [{"Name": "db.ts.example.com", "Type": "A", "Value": "100.64.0.9"}],
    }
    without_override = make_config(tmp_path / "b", dns={
        "base_domain": "ts.example.com", "override_local_dns": False, "nameservers": {"global": ["9.9.9.9"]}})
    assert dns_config(without_override)["FallbackResolvers"] == [{"Addr": "9.9.9.9"}]
