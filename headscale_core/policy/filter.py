"""Network rules (ACLs and grants) -> per-node tailcfg FilterRules.

Each rule is resolved once (`PreparedRule`); a node's filter is then the prepared rules that
name it as destination, with DstPorts reduced to the entries that reach that node (its own
addresses, subnet routes it serves, or the internet when it is an exit node).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from .aliases import Resolved, Resolver
from .ipset import IPSet, format_ip, is_exit_route
from .parse import NetRule
from .ports import PortRange

INTERNET_V4 = ("0.0.0.0-9.255.255.255", "11.0.0.0-100.63.255.255", "100.128.0.0-169.253.255.255",
               "169.255.0.0-172.15.255.255", "172.32.0.0-192.167.255.255", "192.169.0.0-255.255.255.255")
INTERNET_V6 = ("2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",)
# Capabilities whose grant also tells the sources something, and what it tells them.
COMPANION_CAPS = {
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
}


@dataclass(frozen=True)
class PreparedTarget:
    alias: str
    resolved: Resolved
    protos: tuple[int, ...]
    ports: tuple[PortRange, ...]


@dataclass(frozen=True)
class PreparedRule:
    """A `NetRule` with its aliases resolved against the topology."""

    rule: NetRule
    src: Resolved
    src_ips: IPSet
    targets: tuple[PreparedTarget, ...]
    dst: Resolved  # union of all destinations (for app grants and visibility)
    self_dst: bool  # some destination is autogroup:self
    src_strings: list[str]
    via: frozenset[str] = frozenset()  # tags of the routers this grant steers through

    @cached_property
    def companion_caps(self) -> list[str]:
        # Asked of every rule each time a node's filter is worked out: made once per rule.
        return [COMPANION_CAPS[name] for name in sorted(self.rule.app) if name in COMPANION_CAPS]

    def via_router(self, nid: int, resolver: Resolver) -> bool:
        """Is `nid` a router this via grant steers through (via tag and a route into its dst)?"""
        node = resolver.nodes[nid]
        if not self.via.intersection(node.tags):
            return False
        if self.dst.internet and nid in resolver.exit_nodes():
            return True
        return any(_overlaps(p, r) for p in self.dst.prefixes for r in resolver.subnet_routes(nid))

    @property
    def proto_groups(self) -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []
        for t in self.targets:
            if t.protos not in seen:
                seen.append(t.protos)
        return seen


def prepare(rule: NetRule, resolver: Resolver) -> PreparedRule:
    src = resolver.resolve_all(rule.srcs)
    targets = tuple(
        PreparedTarget(t.alias, resolver.resolve(t.alias), t.protos, t.ports)
        for t in rule.targets
        if t.alias != "autogroup:self"
    )
    dst = resolver.resolve_all([d for d in rule.dsts if d != "autogroup:self"])
    # Per alias: next to "*", Tailscale still lists the addresses other aliases name.
    src_ips = IPSet()
    for alias in rule.srcs:
        src_ips = src_ips | resolver.src_ipset(resolver.resolve(alias))
    # autogroup:danger-all is every address, IPv4, IPv6 and tailnet alike: Tailscale writes "*".
    src_strings = ["*"] if src.danger_all else src_ips.src_strings()
    return PreparedRule(rule, src, src_ips, targets, dst, "autogroup:self" in rule.dsts, src_strings,
                        frozenset(rule.via))


def node_filter_rules(nid: int, prepared: list[PreparedRule], resolver: Resolver) -> list[dict[str, Any]]:
    """The FilterRules node `nid` receives, in policy order."""
    out: list[dict[str, Any]] = []
    for rule in prepared:
        if rule.via:
            out.extend(_via_rules(nid, rule, resolver))
            continue
        for protos in rule.proto_groups:
            dst_ports = [entry for t in rule.targets if t.protos == protos
                         for entry in _dst_entries(nid, t, resolver)]
            if dst_ports:
                # The rule's own list, shared by every node it reaches (never modified: filters
                # are only encoded); a copy per node was 5 MB of a 5,000-node sparse tailnet.
                out.append(_filter_rule(rule.src_strings, dst_ports, protos))
        if rule.self_dst:
            out.extend(_self_rules(nid, rule, resolver))
        if rule.rule.app:
            out.extend(_cap_rules(nid, rule, resolver))
    return _merge(out)


def _via_rules(nid: int, rule: PreparedRule, resolver: Resolver) -> list[dict[str, Any]]:
    """A via grant reaches only its routers, for the destinations their subnet routes serve.

    Its app capabilities are not sent: Tailscale compiles only the network part of a via grant.
    """
    if not rule.via_router(nid, resolver):
        return []
    routes = resolver.subnet_routes(nid)
    ips = [format_ip(p) for p in sorted(rule.dst.prefixes, key=str) if any(_overlaps(p, r) for r in routes)]
    if rule.dst.internet and nid in resolver.exit_nodes():
        ips.extend(INTERNET_V4 + INTERNET_V6)
    out = []
    for protos in rule.proto_groups:
        ports = [p for t in rule.targets if t.protos == protos for p in t.ports]
        entries = [{"IP": ip, "Ports": p.as_json()} for ip in dict.fromkeys(ips) for p in dict.fromkeys(ports)]
        if entries:
            out.append(_filter_rule(rule.src_strings, entries, protos))
    return out


def _overlaps(a: Any, b: Any) -> bool:
    return bool(a.version == b.version and a.overlaps(b))


def _cap_rules(nid: int, rule: PreparedRule, resolver: Resolver) -> list[dict[str, Any]]:
    """CapGrant rules node `nid` receives as a destination of an app grant, then companions.

    A companion (drive -> drive-sharer, relay -> relay-target) goes the other way: the grant's
    sources learn that the destinations may use the capability on them.
    """
    app = rule.rule.app
    own = [str(n) for n in resolver.node_nets[nid]]
    out: list[dict[str, Any]] = []
    dsts = _cap_dsts(nid, rule, resolver)
    if dsts:
        out.append(_cap_grant(list(rule.src_strings), dsts, app))
    self_srcs = self_sources(nid, rule, resolver) if rule.self_dst else frozenset()
    if self_srcs:
        out.append(_cap_grant(_node_src_strings(self_srcs, resolver), own, app))
    companions = rule.companion_caps
    if not companions or not resolver.node_in_src(nid, rule.src):
        return out
    peers: list[str] = []
    if any(d != "autogroup:self" for d in rule.rule.dsts):
        peers = resolver.src_ipset(rule.dst).src_strings()
    node = resolver.nodes[nid]
    if rule.self_dst and not node.tags and node.user_id is not None:
        peers += _node_src_strings(resolver.user_nodes(node.user_id), resolver)
    if peers:
        out.extend(_cap_grant(sorted(set(peers)), own, {c: None}) for c in companions)
    return out


def _cap_grant(src: list[str], dsts: list[str], cap_map: dict[str, Any]) -> dict[str, Any]:
    return {"SrcIPs": src, "CapGrant": [{"Dsts": dsts, "CapMap": cap_map}]}


def _node_src_strings(nodes: frozenset[int], resolver: Resolver) -> list[str]:
    return IPSet.of(net for n in nodes for net in resolver.node_nets[n]).src_strings()


def _merge(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold network rules with the same sources and protocols into the first of them."""
    merged: list[dict[str, Any]] = []
    by_key: dict[tuple[tuple[str, ...], tuple[int, ...]], dict[str, Any]] = {}
    for rule in rules:
        if "DstPorts" not in rule:
            merged.append(rule)
            continue
        key = (tuple(rule["SrcIPs"]), tuple(rule.get("IPProto", ())))
        first = by_key.get(key)
        if first is None:
            by_key[key] = rule
            merged.append(rule)
        else:
            # Tailscale concatenates without removing repeats.
            first["DstPorts"] = first["DstPorts"] + rule["DstPorts"]
    return merged


def self_sources(nid: int, rule: PreparedRule, resolver: Resolver) -> frozenset[int]:
    """Nodes allowed to reach `nid` through an autogroup:self destination of `rule`."""
    node = resolver.nodes[nid]
    if node.tags or node.user_id is None:
        return frozenset()
    same_user = resolver.user_nodes(node.user_id)
    if rule.src.star or rule.src.danger_all:
        return same_user
    return same_user & rule.src.nodes


def _self_rules(nid: int, rule: PreparedRule, resolver: Resolver) -> list[dict[str, Any]]:
    sources = self_sources(nid, rule, resolver)
    if not sources:
        return []
    src = IPSet.of(net for s in sources for net in resolver.node_nets[s])
    out = []
    for protos in _self_proto_groups(rule):
        ports = [p for t in rule.rule.targets if t.alias == "autogroup:self" and t.protos == protos for p in t.ports]
        entries = [{"IP": format_ip(net), "Ports": p.as_json()} for net in resolver.node_nets[nid] for p in ports]
        out.append(_filter_rule(src.src_strings(), entries, protos))
    return out


def _self_proto_groups(rule: PreparedRule) -> list[tuple[int, ...]]:
    seen: list[tuple[int, ...]] = []
    for t in rule.rule.targets:
        if t.alias == "autogroup:self" and t.protos not in seen:
            seen.append(t.protos)
    return seen


def _filter_rule(src: list[str], dst_ports: list[dict[str, Any]], protos: tuple[int, ...]) -> dict[str, Any]:
    rule: dict[str, Any] = {"SrcIPs": src, "DstPorts": dst_ports}
    if protos:
        rule["IPProto"] = list(protos)
    return rule


def _dst_entries(nid: int, target: PreparedTarget, resolver: Resolver) -> list[dict[str, Any]]:
    d = target.resolved
    ips: list[str] = []
    if d.star or d.danger_all:
        ips.append("*")
    else:
        if nid in d.nodes:
            ips.extend(_node_ips(resolver.node_nets[nid]))
        if d.internet and nid in resolver.exit_nodes():
            ips.extend(INTERNET_V4 + INTERNET_V6)
        reach = resolver.node_nets[nid] + tuple(r for r in resolver.routes[nid] if not is_exit_route(r))
        for prefix in sorted(d.prefixes, key=str):
            if any(prefix.version == r.version and prefix.overlaps(r) for r in reach):  # type: ignore[arg-type]
                ips.append(format_ip(prefix))
    return [{"IP": ip, "Ports": p.as_json()} for ip in dict.fromkeys(ips) for p in target.ports]


@lru_cache(maxsize=1 << 16)
def _node_ips(nets: tuple[Any, ...]) -> tuple[str, ...]:
    """A node's addresses as FilterRule writes them; a node that is the destination of many
    rules (a server every user may reach) has them formatted once, not once per rule."""
    return tuple(format_ip(n) for n in nets)


def _cap_dsts(nid: int, rule: PreparedRule, resolver: Resolver) -> list[str]:
    d = rule.dst
    if d.star or nid in d.nodes:
        return [str(n) for n in resolver.node_nets[nid]]
    reach = resolver.node_nets[nid] + tuple(r for r in resolver.routes[nid] if not is_exit_route(r))
    return [str(p) for p in sorted(d.prefixes, key=str)
            if any(p.version == r.version and p.overlaps(r) for r in reach)]  # type: ignore[arg-type]
