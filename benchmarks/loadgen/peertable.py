"""A simulated node's view of its tailnet, built from MapResponses the way tailscaled builds it.

A non-null ``Peers`` replaces the whole table; ``PeersChanged`` replaces whole peers;
``PeersRemoved`` drops them; ``PeersChangedPatch``, ``OnlineChange`` and ``PeerSeenChange``
patch fields of peers already known (tailscale ``control/controlclient/map.go``). Only the fields
the benchmarks check are kept, with strings interned across the whole fleet: at N=1,000 dense
there are a million peer records in one process.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Interning table shared by every PeerTable of a process: keys, endpoints and addresses repeat
# in every node's view of the same peer.
_INTERNED: dict[Any, Any] = {}


def _intern(value: Any) -> Any:
    return _INTERNED.setdefault(value, value)


def _strings(values: Iterable[str] | None) -> tuple[str, ...]:
    return _intern(tuple(values or ()))


@dataclass(slots=True)
class Peer:
    """The parts of a ``tailcfg.Node`` a benchmark verifies."""

    id: int
    key: str
    disco_key: str
    endpoints: tuple[str, ...]
    addresses: tuple[str, ...]
    home_derp: int
    online: bool | None
    os_version: str

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> Peer:
        hostinfo = node.get("Hostinfo") or {}
        return cls(
            id=int(node["ID"]),
            key=_intern(node.get("Key", "")),
            disco_key=_intern(node.get("DiscoKey", "")),
            endpoints=_strings(node.get("Endpoints")),
            addresses=_strings(node.get("Addresses")),
            home_derp=int(node.get("HomeDERP") or _legacy_derp(node.get("DERP", ""))),
            online=node.get("Online"),
            os_version=_intern(hostinfo.get("OSVersion", "")),
        )


def _legacy_derp(text: str) -> int:
    """``"127.3.3.40:<region>"``, the pre-``HomeDERP`` spelling some servers still send."""
    host, _, region = (text or "").rpartition(":")
    return int(region) if host == "127.3.3.40" and region.isdigit() else 0


class PeerTable:
    """Peers of one node keyed by node ID; ``apply`` returns the IDs a message touched."""

    def __init__(self) -> None:
        self.peers: dict[int, Peer] = {}
        self.self_node: Mapping[str, Any] | None = None
        self.packet_filter: Any = None
        self.full_maps = 0
        self.deltas = 0

    def apply(self, message: Mapping[str, Any]) -> set[int]:
        touched: set[int] = set()
        if message.get("Node") is not None:
            self.self_node = message["Node"]
        if "PacketFilter" in message:
            self.packet_filter = message["PacketFilter"]
        if message.get("Peers") is not None:
            old = self.peers
            self.peers = {p.id: p for p in map(Peer.from_node, message["Peers"])}
            touched.update(old.keys() ^ self.peers.keys())
            touched.update(pid for pid, peer in self.peers.items() if old.get(pid) != peer)
            self.full_maps += 1
        elif any(k in message for k in ("PeersChanged", "PeersRemoved", "PeersChangedPatch",
                                         "OnlineChange", "PeerSeenChange")):
            self.deltas += 1
        for node in message.get("PeersChanged") or ():
            peer = Peer.from_node(node)
            self.peers[peer.id] = peer
            touched.add(peer.id)
        for node_id in message.get("PeersRemoved") or ():
            if self.peers.pop(int(node_id), None) is not None:
                touched.add(int(node_id))
        for patch in message.get("PeersChangedPatch") or ():
            known = self.peers.get(int(patch["NodeID"]))
            if known is not None:  # tailscaled ignores patches for peers it does not have
                _patch(known, patch)
                touched.add(known.id)
        for key, online in (message.get("OnlineChange") or {}).items():
            known = self.peers.get(int(key))
            if known is not None:
                known.online = bool(online)
                touched.add(known.id)
        return touched


def _patch(peer: Peer, patch: Mapping[str, Any]) -> None:
    if "Endpoints" in patch:
        peer.endpoints = _strings(patch["Endpoints"])
    if "DERPRegion" in patch:
        peer.home_derp = int(patch["DERPRegion"] or 0)
    if "DiscoKey" in patch:
        peer.disco_key = _intern(patch["DiscoKey"] or "")
    if "Key" in patch:
        peer.key = _intern(patch["Key"] or "")
    if "Online" in patch:
        peer.online = patch["Online"]
