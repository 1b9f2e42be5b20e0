"""Alias resolution: each policy name (user, group, tag, host, autogroup, IP) to the nodes and
address prefixes it stands for, computed once per compile and cached by alias text."""

from __future__ import annotations

import copy
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from .ipset import EXIT_ROUTES, IPAddress, IPNetwork, IPSet, is_exit_route, parse_network
from .model import PolicyNode, PolicyUser
from .parse import Policy
from .routes import auto_approved


@dataclass(frozen=True)
class Resolved:
    """What one alias names: nodes (by id), extra prefixes, and the two special sets."""

    nodes: frozenset[int] = frozenset()
    prefixes: frozenset[IPNetwork] = frozenset()
    star: bool = False  # "*": every tailnet address (and, as a source, every approved route)
    internet: bool = False  # autogroup:internet
    danger_all: bool = False  # autogroup:danger-all: every address, written "*"

    def __or__(self, other: Resolved) -> Resolved:
        return Resolved(self.nodes | other.nodes, self.prefixes | other.prefixes, self.star or other.star,
                        self.internet or other.internet, self.danger_all or other.danger_all)


EMPTY = Resolved()
# The autogroups `_resolve` answers with nodes (the role autogroups are in ROLE_AUTOGROUPS).
_NODE_AUTOGROUPS = frozenset({"autogroup:danger-all", "autogroup:member", "autogroup:tagged"})
# The owner holds every admin right.
ROLE_AUTOGROUPS = {"autogroup:owner": frozenset({"owner"}), "autogroup:admin": frozenset({"owner", "admin"})}


class Resolver:
    """Resolves aliases against one topology; results are cached per alias."""

    def __init__(self, policy: Policy, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> None:
        self.policy = policy
        self.users = {u.id: u for u in users}
        self.nodes = {n.id: n for n in nodes}
        self.node_nets: dict[int, tuple[IPNetwork, ...]] = {
            n.id: tuple(parse_network(a) for a in n.addresses) for n in nodes
        }
        self.routes: dict[int, tuple[IPNetwork, ...]] = {}
        self._by_login: dict[str, list[int]] = {}
        for user in users:
            self._by_login.setdefault(user.login.lower(), []).append(user.id)
            self._by_login.setdefault(f"{user.name.lower()}@", []).append(user.id)
        self._user_nodes: dict[int, set[int]] = {}
        self._tag_nodes: dict[str, set[int]] = {}
        for node in nodes:
            if node.tags:
                for tag in node.tags:
                    self._tag_nodes.setdefault(tag, set()).add(node.id)
            elif node.user_id is not None:
                self._user_nodes.setdefault(node.user_id, set()).add(node.id)
        self._cache: dict[str, Resolved] = {}
        for node in nodes:
            approved = set(node.approved_routes) | set(auto_approved(node, node.advertised_routes, self))
            self.routes[node.id] = tuple(parse_network(r) for r in node.advertised_routes if r in approved)
        self._ip_index: dict[IPAddress, int] | None = None
        self._exit_nodes: frozenset[int] | None = None
        self._sorted_ips: list[tuple[int, int, int]] | None = None
        self._matching: dict[tuple[Resolved, bool], frozenset[int]] = {}

    def with_node(self, node: PolicyNode) -> Resolver:
        """A copy for the tailnet with `node` added or replaced; untouched indexes are shared."""
        return self.with_nodes([node])

    def with_nodes(self, nodes: Sequence[PolicyNode]) -> Resolver:
        """A copy for the tailnet with `nodes` added or replaced; untouched indexes are shared."""
        new = copy.copy(self)
        new.nodes = dict(self.nodes)
        new.node_nets = dict(self.node_nets)
        new.routes = dict(self.routes)
        # Only the users and tags the changed nodes had or have get new member sets; the other
        # sets are shared with this resolver (neither changes them again).
        versions = [v for node in nodes for v in (self.nodes.get(node.id), node) if v is not None]
        users = {v.user_id for v in versions if not v.tags and v.user_id is not None}
        tags = {tag for v in versions for tag in v.tags}
        changed = {node.id for node in nodes}
        new._user_nodes = dict(self._user_nodes)
        new._tag_nodes = dict(self._tag_nodes)
        for user in users:
            new._user_nodes[user] = new._user_nodes.get(user, set()) - changed
        for tag in tags:
            new._tag_nodes[tag] = new._tag_nodes.get(tag, set()) - changed
        moved = rerouted = False
        for node in nodes:
            old = self.nodes.get(node.id)
            new.nodes[node.id] = node
            new.node_nets[node.id] = tuple(parse_network(a) for a in node.addresses)
            if node.tags:
                for tag in node.tags:
                    new._tag_nodes[tag].add(node.id)
            elif node.user_id is not None:
                new._user_nodes[node.user_id].add(node.id)
            moved = moved or old is None or old.addresses != node.addresses
        new._cache = {alias: resolved for alias, resolved in self._cache.items()
                      if self._unaffected(alias, users, tags)}
        new._matching = {}
        # autoApprovers may name tags and users, so routes are approved once every index is current.
        for node in nodes:
            approved = set(node.approved_routes) | set(auto_approved(node, node.advertised_routes, new))
            new.routes[node.id] = tuple(parse_network(r) for r in node.advertised_routes if r in approved)
            rerouted = rerouted or new.routes[node.id] != self.routes.get(node.id, ())
        if moved:
            new._ip_index = new._sorted_ips = None
        if rerouted:
            new._exit_nodes = None
        return new

    def _unaffected(self, alias: str, users: set[int], tags: set[str]) -> bool:
        """Does ``alias`` resolve the same whatever happens to the nodes of ``users`` and the
        nodes tagged ``tags`` (so a copy of this resolver may keep its cached resolution)?
        Mirrors ``_resolve``: aliases over every node (``*``, ``autogroup:member``, ...) never are."""
        if alias == "*":
            return False
        if alias.startswith("autogroup:"):
            return alias not in ROLE_AUTOGROUPS and alias not in _NODE_AUTOGROUPS
        if alias.startswith("tag:"):
            return alias not in tags
        if alias.startswith("group:"):
            return users.isdisjoint(self.group_users(alias))
        if "@" in alias:
            return users.isdisjoint(self.user_ids(alias))
        return True  # a host or a prefix: no node in it

    def user_ids(self, token: str) -> list[int]:
        token = token.removeprefix("user:").lower()
        if token.startswith("*@"):
            domain = token[2:]
            return [u.id for u in self.users.values() if u.email.lower().endswith("@" + domain)]
        return self._by_login.get(token, [])

    def user_nodes(self, user_id: int) -> frozenset[int]:
        return frozenset(self._user_nodes.get(user_id, ()))

    def group_users(self, group: str) -> list[int]:
        ids: list[int] = []
        for member in self.policy.groups.get(group, []):
            ids.extend(self.user_ids(member))
        return ids

    def exit_nodes(self) -> frozenset[int]:
        if self._exit_nodes is None:
            self._exit_nodes = frozenset(
                nid for nid, routes in self.routes.items() if any(is_exit_route(r) for r in routes))
        return self._exit_nodes

    def resolve(self, alias: str) -> Resolved:
        cached = self._cache.get(alias)
        if cached is None:
            cached = self._cache[alias] = self._resolve(alias)
        return cached

    def resolve_all(self, aliases: Sequence[str]) -> Resolved:
        out = EMPTY
        for alias in aliases:
            out = out | self.resolve(alias)
        return out

    def _resolve(self, alias: str) -> Resolved:
        if alias == "*":
            return Resolved(nodes=frozenset(self.nodes), star=True)
        if alias == "autogroup:danger-all":
            return Resolved(nodes=frozenset(self.nodes), danger_all=True)
        if alias == "autogroup:internet":
            return Resolved(internet=True)
        if alias == "autogroup:member":
            return Resolved(nodes=frozenset(n for ids in self._user_nodes.values() for n in ids))
        if alias == "autogroup:tagged":
            return Resolved(nodes=frozenset(n.id for n in self.nodes.values() if n.tags))
        if alias in ROLE_AUTOGROUPS:
            roles = ROLE_AUTOGROUPS[alias]
            return Resolved(nodes=frozenset(n for u in self.users.values() if roles.intersection(u.roles)
                                            for n in self.user_nodes(u.id)))
        if alias.startswith("autogroup:"):
            return EMPTY
        if alias.startswith("tag:"):
            return Resolved(nodes=frozenset(self._tag_nodes.get(alias, ())))
        if alias.startswith("group:"):
            return Resolved(nodes=frozenset(n for u in self.group_users(alias) for n in self.user_nodes(u)))
        if "@" in alias:
            return Resolved(nodes=frozenset(n for u in self.user_ids(alias) for n in self.user_nodes(u)))
        text = self.policy.hosts.get(alias, alias)
        return Resolved(prefixes=frozenset({parse_network(text)}))

    def node_by_ip(self, ip: IPAddress) -> int | None:
        if self._ip_index is None:
            self._ip_index = {net.network_address: nid for nid, nets in self.node_nets.items() for net in nets}
        return self._ip_index.get(ip)

    def routed(self, ip: IPAddress) -> bool:
        """Is `ip` inside some node's approved subnet route?"""
        return any(ip.version == r.version and ip in r and not is_exit_route(r)
                   for routes in self.routes.values() for r in routes)

    def src_ipset(self, resolved: Resolved) -> IPSet:
        """Source addresses: node addresses, literal prefixes, and for `*` the approved routes."""
        nets: set[IPNetwork] = set(resolved.prefixes)
        if resolved.danger_all:
            nets.update(EXIT_ROUTES)
        if resolved.star:
            for routes in self.routes.values():
                nets.update(r for r in routes if not is_exit_route(r))
            return IPSet(frozenset(nets), tailnet=True)
        for nid in resolved.nodes:
            nets.update(self.node_nets[nid])
        return IPSet(frozenset(nets))

    def matching_nodes(self, resolved: Resolved, as_source: bool = False) -> frozenset[int]:
        """All nodes `node_matches` (or, for a source, `node_in_src`) accepts, found by index."""
        key = (resolved, as_source)
        cached = self._matching.get(key)
        if cached is None:
            cached = self._matching[key] = self._matching_nodes(resolved, as_source)
        return cached

    def _matching_nodes(self, resolved: Resolved, as_source: bool) -> frozenset[int]:
        if resolved.star or resolved.danger_all:
            return frozenset(self.nodes)
        out = set(resolved.nodes)
        if resolved.internet and not as_source:
            out |= self.exit_nodes()
        if resolved.prefixes and self._sorted_ips is None:  # built on first need: O(N log N)
            self._sorted_ips = sorted((n.version, int(n.network_address), nid)
                                      for nid, nets in self.node_nets.items() for n in nets)
        for prefix in resolved.prefixes:
            assert self._sorted_ips is not None
            lo = bisect_left(self._sorted_ips, (prefix.version, int(prefix.network_address), -1))
            hi = bisect_right(self._sorted_ips, (prefix.version, int(prefix.broadcast_address), 1 << 62))
            out.update(nid for _, _, nid in self._sorted_ips[lo:hi])
            if not as_source:
                out.update(self.routers_into(prefix))
        return frozenset(out)

    def subnet_routes(self, nid: int) -> tuple[IPNetwork, ...]:
        return tuple(r for r in self.routes[nid] if not is_exit_route(r))

    def routers_into(self, prefix: IPNetwork) -> set[int]:
        """Nodes with an approved subnet route overlapping `prefix`."""
        return {nid for nid, routes in self.routes.items()
                if any(r.version == prefix.version and r.overlaps(prefix)  # type: ignore[arg-type]
                       for r in routes if not is_exit_route(r))}

    def node_matches(self, nid: int, resolved: Resolved) -> bool:
        """Does traffic to node `nid` (its addresses or approved routes) fall under `resolved`?"""
        if resolved.star or resolved.danger_all or nid in resolved.nodes:
            return True
        if resolved.internet and nid in self.exit_nodes():
            return True
        nets = self.node_nets[nid] + tuple(r for r in self.routes[nid] if not is_exit_route(r))
        return any(p.version == n.version and p.overlaps(n) for p in resolved.prefixes for n in nets)  # type: ignore[arg-type]

    def node_in_src(self, nid: int, resolved: Resolved) -> bool:
        if resolved.star or resolved.danger_all or nid in resolved.nodes:
            return True
        return any(p.version == n.version and n.subnet_of(p)  # type: ignore[arg-type]
                   for p in resolved.prefixes for n in self.node_nets[nid])
