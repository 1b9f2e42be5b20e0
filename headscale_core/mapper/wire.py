"""tailcfg JSON for nodes, DNS and user profiles (control protocol §8, §9).

Exact Go field names; zero values omitted rather than sent as ``""`` (a key field sent as
``""`` makes the client reject the whole message).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from headscale_core.protocol.wirejson import dumps_kept
from headscale_core.state.model import TAGGED_DEVICES_USER_ID, TAGGED_DEVICES_USER_NAME, Node, User

if TYPE_CHECKING:
    from headscale_core.config import Config
    from headscale_core.state.service import StateService

ZERO_TIME = "0001-01-01T00:00:00Z"
SELF_CAPS = {
    "https://tailscale.com/cap/is-admin": [],
    "https://tailscale.com/cap/ssh": [],
    "default-auto-update": [False],
}


def go_time(when: datetime | None) -> str:
    if when is None:
        return ZERO_TIME
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC)
    return when.isoformat().replace("+00:00", "Z")


def node_base(state: StateService, node: Node, *, online: bool, expired: bool) -> dict[str, Any]:
    """The part of ``tailcfg.Node`` every viewer sees alike (all but AllowedIPs, PrimaryRoutes
    and the self-only CapMap)."""
    base = state.config.dns.base_domain
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": str(node.id),
        "Name": f"{node.given_name}.{base}." if base else f"{node.given_name}.",
        "User": node.user_id if node.user_id is not None else TAGGED_DEVICES_USER_ID,
        "Key": node.node_key,
        "KeyExpiry": go_time(node.expiry),
        "Machine": node.machine_key,
        "Addresses": node.addresses,
        "Hostinfo": node.host_info or {},
        "Created": go_time(node.created_at),
        "MachineAuthorized": True,
        "Online": online,
    }
    if node.disco_key:
        out["DiscoKey"] = node.disco_key
    if node.endpoints:
        out["Endpoints"] = list(node.endpoints)
    if node.home_derp:
        out["HomeDERP"] = node.home_derp
    if node.capver:
        out["Cap"] = node.capver
    if node.tags:
        out["Tags"] = list(node.tags)
    if not online and node.last_seen is not None:
        out["LastSeen"] = go_time(node.last_seen)
    if expired:
        out["Expired"] = True
    return out


def is_expired(node: Node) -> bool:
    return node.expiry is not None and node.expiry <= datetime.now(UTC)


def self_node_json(state: StateService, node: Node) -> dict[str, Any]:
    """``tailcfg.Node`` of a node as it sees itself (its routes, its CapMap)."""
    policy = state.policy
    out = node_base(state, node, online=node.id in state.store.online, expired=is_expired(node))
    out["AllowedIPs"] = node.addresses + policy.routes_in_use(node)
    primaries = policy.primary_routes(node)
    if primaries:
        out["PrimaryRoutes"] = primaries
    capmap: dict[str, Any] = dict(SELF_CAPS)
    if state.config.taildrop.enabled:
        capmap["https://tailscale.com/cap/file-sharing"] = []
    compiled = policy.compiled()
    if compiled is not None:
        capmap.update(compiled.capmap(node.id))
    out["CapMap"] = capmap
    return out


class PeerJSON:
    """Peers' ``tailcfg.Node`` JSON, built once per node version and shared by every viewer,
    batch and full map; only the AllowedIPs/PrimaryRoutes variant differs per viewer. Each
    variant is also kept encoded, so a full map splices the bytes instead of re-encoding peers.

    An entry is reused while the node object (frozen, replaced on every change), its online
    state and its expiry verdict are the same. The dicts handed out are shared: callers must
    not modify them.
    """

    def __init__(self, state: StateService) -> None:
        self.state = state
        self._entries: dict[int, _PeerEntry] = {}

    def variant(self, node: Node, viewer_id: int, now: datetime | None = None) -> PeerVariant:
        """``node`` as ``viewer_id`` sees it; ``now`` (the expiry clock) may be passed by a
        caller asking for many peers at once."""
        entry = self._entry(node, now)
        if entry.uniform is not None:
            return entry.uniform
        policy = self.state.policy
        return entry.variant(tuple(policy.peer_allowed_ips(viewer_id, node)), tuple(policy.primary_routes(node)))

    def _entry(self, node: Node, now: datetime | None) -> _PeerEntry:
        """The node's current entry, its viewer-independent variant (if any) up to date."""
        policy = self.state.policy
        online = node.id in self.state.store.online
        expired = node.expiry is not None and node.expiry <= (now or datetime.now(UTC))
        entry = self._entries.get(node.id)
        if entry is None or not entry.fresh(node, online, expired):
            entry = self._entries[node.id] = _PeerEntry(
                node, online, expired, node_base(self.state, node, online=online, expired=expired))
        # Most peers look alike to every viewer (no routes): one lookup per policy version.
        if entry.uniform_version != policy.version:
            uniform = policy.uniform_peer_ips(node)
            entry.uniform = None if uniform is None else entry.variant(tuple(uniform), ())
            entry.uniform_version = policy.version
        return entry

    def peer(self, node: Node, viewer_id: int) -> dict[str, Any]:
        return self.variant(node, viewer_id).json

    def run_variants(self, nodes: Sequence[Node], viewer_id: int, now: datetime) -> tuple[list[PeerVariant], bool]:
        """``nodes`` as ``viewer_id`` sees them (a run of a full map's peers), and whether every
        one of them is the same for any viewer (no routes, no attribute hiding addresses), so
        that viewers seeing the same nodes may share the list."""
        out: list[PeerVariant] = []
        shared = True
        for node in nodes:
            entry = self._entry(node, now)
            if entry.uniform is not None:
                out.append(entry.uniform)
            else:
                shared = False
                out.append(self.variant(node, viewer_id, now))
        return out, shared

    def forget(self, node_ids: Iterable[int]) -> None:
        for node_id in node_ids:
            self._entries.pop(node_id, None)


_serials = itertools.count(1)


class PeerVariant:
    """A peer's ``tailcfg.Node`` JSON as some viewers see it, and its encoding once asked for.
    ``serial`` is never reused in the process: caches key on it without holding the variant."""

    __slots__ = ("json", "_encoded", "serial")

    def __init__(self, json: dict[str, Any]) -> None:
        self.json = json
        self._encoded: bytes | None = None
        self.serial = next(_serials)

    @property
    def encoded(self) -> bytes:
        if self._encoded is None:
            self._encoded = dumps_kept(self.json)
        return self._encoded


class _PeerEntry:
    """One node version's viewer-independent JSON and its per-viewer variants (by AllowedIPs
    and PrimaryRoutes)."""

    __slots__ = ("node", "online", "expired", "base", "variants", "uniform", "uniform_version")

    def __init__(self, node: Node, online: bool, expired: bool, base: dict[str, Any]) -> None:
        self.node, self.online, self.expired, self.base = node, online, expired, base
        self.variants: dict[tuple[tuple[str, ...], tuple[str, ...]], PeerVariant] = {}
        self.uniform: PeerVariant | None = None
        self.uniform_version = -1

    def fresh(self, node: Node, online: bool, expired: bool) -> bool:
        """Is this entry still ``node`` as it is now (the same version, online state, expiry)?"""
        return self.node is node and self.online == online and self.expired == expired

    def variant(self, allowed: tuple[str, ...], primaries: tuple[str, ...]) -> PeerVariant:
        found = self.variants.get((allowed, primaries))
        if found is None:
            out = dict(self.base, AllowedIPs=list(allowed))
            if primaries:
                out["PrimaryRoutes"] = list(primaries)
            found = self.variants[allowed, primaries] = PeerVariant(out)
        return found


def peer_change(state: StateService, node: Node, fields: set[str] | frozenset[str]) -> dict[str, Any]:
    """A ``PeerChange`` patch carrying the current values of ``fields``."""
    out: dict[str, Any] = {"NodeID": node.id}
    if "Endpoints" in fields:
        out["Endpoints"] = list(node.endpoints)
    if "DERPRegion" in fields:
        out["DERPRegion"] = node.home_derp
    if "DiscoKey" in fields and node.disco_key:
        out["DiscoKey"] = node.disco_key
    if "Key" in fields:
        out["Key"] = node.node_key
    if "Online" in fields:
        out["Online"] = node.id in state.store.online
    if "LastSeen" in fields and node.last_seen is not None:
        out["LastSeen"] = go_time(node.last_seen)
    if "KeyExpiry" in fields:
        out["KeyExpiry"] = go_time(node.expiry)
    return out


def user_profile(user: User | None) -> dict[str, Any]:
    if user is None:
        return {"ID": TAGGED_DEVICES_USER_ID, "LoginName": TAGGED_DEVICES_USER_NAME,
                "DisplayName": TAGGED_DEVICES_USER_NAME}
    profile = {"ID": user.id, "LoginName": user.login_name, "DisplayName": user.display_name or user.name}
    if user.profile_pic_url:
        profile["ProfilePicURL"] = user.profile_pic_url
    return profile


def dns_config(config: Config) -> dict[str, Any]:
    dns = config.dns
    out: dict[str, Any] = {}
    if dns.magic_dns:
        out["Proxied"] = True
    domains = ([dns.base_domain] if dns.base_domain and dns.magic_dns else []) + list(dns.search_domains)
    if domains:
        out["Domains"] = domains
    resolvers = [{"Addr": addr} for addr in dns.nameservers.global_]
    if resolvers:
        out["Resolvers" if dns.override_local_dns else "FallbackResolvers"] = resolvers
    if dns.nameservers.split:
        out["Routes"] = {domain: [{"Addr": a} for a in addrs] for domain, addrs in dns.nameservers.split.items()}
    if dns.extra_records:
        out["ExtraRecords"] = [{"Name": r.get("name", ""), "Type": r.get("type", ""), "Value": r.get("value", "")}
                               for r in dns.extra_records]
    return out
