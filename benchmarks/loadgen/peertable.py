"""A simulated node's view of its tailnet, built from MapResponses the way tailscaled builds it.

A non-null ``Peers`` replaces the whole table; ``PeersChanged`` replaces whole peers;
``PeersRemoved`` drops them; ``PeersChangedPatch``, ``OnlineChange`` and ``PeerSeenChange``
patch fields of peers already known (tailscale ``control/controlclient/map.go``).

Messages are decoded straight into typed structs holding only the fields the benchmarks check
(msgspec skips the rest, Hostinfo above all): at N=1,000 dense a reconnect storm delivers a
thousand full maps of a thousand peers each, and decoding them is the load generator's largest
cost. Strings are interned across the whole fleet, since there are a million peer records in
one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

# Interning table shared by every PeerTable of a process: keys, endpoints and addresses repeat
# in every node's view of the same peer.
_INTERNED: dict[Any, Any] = {}


def _intern(value: Any) -> Any:
    return _INTERNED.setdefault(value, value)


class HostinfoWire(msgspec.Struct):
    OSVersion: str = ""


class NodeWire(msgspec.Struct):
    """The checked fields of a ``tailcfg.Node``."""

    ID: int
    Key: str = ""
    DiscoKey: str = ""
    Endpoints: list[str] | None = None
    Addresses: list[str] | None = None
    HomeDERP: int = 0
    DERP: str = ""  # "127.3.3.40:<region>", the pre-HomeDERP spelling some servers still send
    Online: bool | None = None
    Hostinfo: HostinfoWire | None = None


class PatchWire(msgspec.Struct):
    """A ``tailcfg.PeerChange``: absent fields (UNSET) are left alone."""

    NodeID: int
    Endpoints: list[str] | None | UnsetType = UNSET
    DERPRegion: int | None | UnsetType = UNSET
    DiscoKey: str | None | UnsetType = UNSET
    Key: str | None | UnsetType = UNSET
    Online: bool | None | UnsetType = UNSET


class MapMessage(msgspec.Struct):
    """The checked fields of a ``tailcfg.MapResponse``."""

    Node: NodeWire | None = None
    PacketFilter: Any = UNSET
    Peers: list[NodeWire] | None = None
    PeersChanged: list[NodeWire] | None = None
    PeersRemoved: list[int] | None = None
    PeersChangedPatch: list[PatchWire] | None = None
    OnlineChange: dict[str, bool] | None = None
    PeerSeenChange: dict[str, bool] | None = None
    KeepAlive: bool = False

    @property
    def is_delta(self) -> bool:
        return bool(self.PeersChanged or self.PeersRemoved or self.PeersChangedPatch or self.OnlineChange
                    or self.PeerSeenChange)


_DECODER = msgspec.json.Decoder(MapMessage)


def decode_message(raw: bytes) -> MapMessage:
    return _DECODER.decode(raw)


def message_from(value: Mapping[str, Any]) -> MapMessage:
    """A MapMessage from already-parsed JSON (tests write messages as dicts)."""
    return msgspec.convert(value, MapMessage)


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
    def from_wire(cls, node: NodeWire) -> Peer:
        return cls(
            id=node.ID,
            key=_intern(node.Key),
            disco_key=_intern(node.DiscoKey),
            endpoints=_intern(tuple(node.Endpoints or ())),
            addresses=_intern(tuple(node.Addresses or ())),
            home_derp=node.HomeDERP or _legacy_derp(node.DERP),
            online=node.Online,
            os_version=_intern(node.Hostinfo.OSVersion if node.Hostinfo else ""),
        )


def _legacy_derp(text: str) -> int:
    host, _, region = (text or "").rpartition(":")
    return int(region) if host == "127.3.3.40" and region.isdigit() else 0


class PeerTable:
    """Peers of one node keyed by node ID; ``apply`` returns the IDs a message touched."""

    def __init__(self) -> None:
        self.peers: dict[int, Peer] = {}
        self.self_node: NodeWire | None = None
        self.packet_filter: Any = None
        self.full_maps = 0
        self.deltas = 0

    def apply(self, message: MapMessage | Mapping[str, Any]) -> set[int]:
        if not isinstance(message, MapMessage):
            message = message_from(message)
        touched: set[int] = set()
        if message.Node is not None:
            self.self_node = message.Node
        if message.PacketFilter is not UNSET:
            self.packet_filter = message.PacketFilter
        if message.Peers is not None:
            old = self.peers
            self.peers = {p.id: p for p in map(Peer.from_wire, message.Peers)}
            touched.update(old.keys() ^ self.peers.keys())
            touched.update(pid for pid, peer in self.peers.items() if old.get(pid) != peer)
            self.full_maps += 1
        elif message.is_delta:
            self.deltas += 1
        for node in message.PeersChanged or ():
            peer = Peer.from_wire(node)
            self.peers[peer.id] = peer
            touched.add(peer.id)
        for node_id in message.PeersRemoved or ():
            if self.peers.pop(node_id, None) is not None:
                touched.add(node_id)
        for patch in message.PeersChangedPatch or ():
            known = self.peers.get(patch.NodeID)
            if known is not None:  # tailscaled ignores patches for peers it does not have
                _patch(known, patch)
                touched.add(known.id)
        for key, online in (message.OnlineChange or {}).items():
            known = self.peers.get(int(key))
            if known is not None:
                known.online = bool(online)
                touched.add(known.id)
        return touched


def _patch(peer: Peer, patch: PatchWire) -> None:
    if patch.Endpoints is not UNSET:
        peer.endpoints = _intern(tuple(patch.Endpoints or ()))
    if patch.DERPRegion is not UNSET:
        peer.home_derp = patch.DERPRegion or 0
    if patch.DiscoKey is not UNSET:
        peer.disco_key = _intern(patch.DiscoKey or "")
    if patch.Key is not UNSET:
        peer.key = _intern(patch.Key or "")
    if patch.Online is not UNSET:
        peer.online = patch.Online
