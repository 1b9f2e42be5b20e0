"""`compile_policy` and the per-topology result the server queries per node.

Aliases and rules are resolved once; per-node answers (filter, peers, SSH policy) are computed
on first use and cached, so a map update for one node does not pay for the whole tailnet.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from .aliases import Resolved, Resolver
from .filter import PreparedRule, node_filter_rules, prepare, self_sources
from .incremental import with_nodes_changed
from .ipset import IPNetwork, is_exit_route, parse_network
from .model import Explanation, PolicyNode, PolicyUser
from .nodeattrs import DISABLE_IPV4, node_capmap
from .parse import NetRule, Policy, Target
from .ports import ALL_PORTS
from .routes import auto_approved
from .ssh import node_ssh_policy
from .via import via_routes

ALLOW_ALL = [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]


class CompiledPolicy:
    """A policy resolved against one topology (users + nodes)."""

    def __init__(self, policy: Policy | None, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode],
                 ssh_check_url: str = "https://unused") -> None:
        self.policy = policy
        self.ssh_check_url = ssh_check_url
        self.users = tuple(users)
        self.resolver = Resolver(policy or _EMPTY_POLICY, users, nodes)
        self.allow_all = policy is None
        # A policy without acls and grants gets Tailscale's default: everyone reaches everything.
        rules = [] if policy is None else policy.rules if policy.has_rules else [DEFAULT_RULE]
        self.prepared: list[PreparedRule] = [prepare(r, self.resolver) for r in rules]
        self._filters: dict[int, list[dict[str, Any]]] = {}
        self._peers: dict[int, frozenset[int]] = {}
        self._capmaps: dict[int, dict[str, list[Any]]] = {}
        self._addresses: dict[tuple[int, bool], list[str]] = {}
        # After `with_nodes_changed`: the nodes whose peers, filter or SSH policy may differ from
        # the policy it was derived from (None: any node's may).
        self.stale_nodes: frozenset[int] | None = None

    def with_node_changed(self, node: PolicyNode) -> CompiledPolicy:
        """A recompiled copy after one node's tags, user, addresses or routes changed (or it joined).

        Only the rules and nodes the change can reach are recomputed; see `incremental`.
        """
        return with_nodes_changed(self, [node])

    def with_nodes_changed(self, nodes: Sequence[PolicyNode]) -> CompiledPolicy:
        """`with_node_changed` for several nodes at once (a batch of registrations)."""
        return with_nodes_changed(self, nodes)

    @property
    def nodes(self) -> tuple[PolicyNode, ...]:
        """Every node, in the order they joined the topology (made on demand: a recompile
        after a registration must not copy the tailnet)."""
        return tuple(self.resolver.nodes.values())

    def packet_filter(self, node_id: int) -> list[dict[str, Any]]:
        if self.allow_all:
            return [dict(r) for r in ALLOW_ALL]
        rules = self._filters.get(node_id)
        if rules is None:
            relevant = [rule for srcs, dsts, rule in self._edges
                        if node_id in dsts or rule.self_dst or (rule.companion_caps and node_id in srcs)]
            rules = self._filters[node_id] = node_filter_rules(node_id, relevant, self.resolver)
        return rules

    @cached_property
    def _edges(self) -> list[tuple[frozenset[int], frozenset[int], PreparedRule]]:
        """(sources, destinations) node sets per rule, for visibility."""
        return [self.edges_of(rule) for rule in self.prepared]

    def edges_of(self, rule: PreparedRule) -> tuple[frozenset[int], frozenset[int], PreparedRule]:
        r = self.resolver
        # A router whose subnet falls in the sources sends on that subnet's behalf.
        srcs = r.matching_nodes(rule.src, as_source=True).union(*(r.routers_into(p) for p in rule.src.prefixes))
        if rule.via:
            dsts = frozenset(n for n in r.nodes if rule.via_router(n, r))
        else:
            dsts = r.matching_nodes(rule.dst)
        return srcs, dsts, rule

    def visible_peers(self, node_id: int) -> frozenset[int]:
        cached = self._peers.get(node_id)
        if cached is not None:
            return cached
        if self.allow_all:
            peers = frozenset(self.resolver.nodes)
        else:
            peers = frozenset()
            for srcs, dsts, rule in self._edges:
                if node_id in dsts:
                    peers |= srcs
                if node_id in srcs:
                    peers |= dsts
                if rule.self_dst:
                    peers |= self_sources(node_id, rule, self.resolver)
                    if node_id in rule.src.nodes or rule.src.star:
                        node = self.resolver.nodes[node_id]
                        if not node.tags and node.user_id is not None:
                            peers |= self.resolver.user_nodes(node.user_id)
        peers = peers - {node_id}
        self._peers[node_id] = peers
        return peers

    @cached_property
    def _primaries(self) -> dict[str, int]:
        """Prefix -> the node serving it: the earliest registered (lowest id) approved router."""
        out: dict[str, int] = {}
        for nid in sorted(self.resolver.routes):
            for route in self.resolver.routes[nid]:
                if not is_exit_route(route):
                    out.setdefault(str(route), nid)
        return out

    def primary_routes(self, peer_id: int) -> list[str]:
        return [p for p, nid in self._primaries.items() if nid == peer_id]

    def capmap(self, node_id: int) -> dict[str, list[Any]]:
        """The capabilities `nodeAttrs` give the node (its SelfNode.CapMap, policy part)."""
        cached = self._capmaps.get(node_id)
        if cached is None:
            if self.policy is None:
                cached = {}
            else:
                cached = node_capmap(node_id, self.policy.node_attrs, self.resolver,
                                     bool(self.policy.raw.get("randomizeClientPort")))
            self._capmaps[node_id] = cached
        return cached

    @cached_property
    def _disables_ipv4(self) -> bool:
        return self.policy is not None and any(DISABLE_IPV4 in entry.attrs for entry in self.policy.node_attrs)

    def _address_strings(self, peer_id: int, no_v4: bool) -> list[str]:
        out = self._addresses.get((peer_id, no_v4))
        if out is None:
            out = self._addresses[peer_id, no_v4] = [
                str(n) for n in self.resolver.node_nets[peer_id] if not (no_v4 and n.version == 4)]
        return out

    def uniform_allowed_ips(self, peer_id: int) -> list[str] | None:
        """The peer's AllowedIPs when they are the same for every viewer (no routes, no
        disable-ipv4 anywhere), else None. Shared: do not modify."""
        if self._disables_ipv4 or self.resolver.routes[peer_id]:
            return None
        return self._address_strings(peer_id, False)

    def peer_allowed_ips(self, viewer_id: int, peer_id: int) -> list[str]:
        """The peer's AllowedIPs as `viewer_id` sees them. Shared between calls: do not modify."""
        # A node with disable-ipv4 has no IPv4 tailnet address, to its peers and in its own view.
        no_v4 = self._disables_ipv4 and (
            DISABLE_IPV4 in self.capmap(peer_id) or DISABLE_IPV4 in self.capmap(viewer_id))
        addresses = self._address_strings(peer_id, no_v4)
        if not self.resolver.routes[peer_id]:  # no routes: only its addresses, for every viewer
            return addresses
        out = list(addresses)
        primaries = [parse_network(p) for p in self.primary_routes(peer_id)]
        exits = [r for r in self.resolver.routes[peer_id] if is_exit_route(r)]
        steered = via_routes(self.prepared, self.resolver, viewer_id, peer_id) if not self.allow_all else None
        routes = [r for r in primaries + exits
                  if (steered is None or r not in steered.exclude) and self._may_use_route(viewer_id, r)]
        if steered:
            routes += [r for r in steered.include
                       if r not in routes and (r in primaries or r not in steered.use_primary)]
        # A router sharing a subnet with its primary sees that route on the primary.
        own = self.resolver.subnet_routes(viewer_id)
        routes += [r for r in primaries if r in own and r not in routes]
        return out + [str(r) for r in routes]

    def _may_use_route(self, viewer_id: int, route: IPNetwork) -> bool:
        """A route is offered to a viewer that may send into it or receive from it."""
        if self.allow_all:
            return True
        for srcs, dsts, rule in self._edges:
            if rule.via:  # a via grant's routes are decided by via_routes
                continue
            if viewer_id in srcs and _reaches(rule.dst, route, as_dst=True):
                return True
            if viewer_id in dsts and not is_exit_route(route) and _reaches(rule.src, route):
                return True
        return False

    @cached_property
    def _ssh(self) -> dict[int, dict[str, Any]]:
        return {}

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        """The node's SSHPolicy; `None` without a policy (Tailscale SSH is then not configured).
        Computed once per topology; shared between calls: do not modify."""
        if self.policy is None:
            return None
        cached = self._ssh.get(node_id)
        if cached is None:
            cached = self._ssh[node_id] = node_ssh_policy(node_id, self.policy.ssh, self.resolver,
                                                         self.ssh_check_url)
        return cached

    def auto_approved_routes(self, node: PolicyNode, routes: Sequence[str]) -> list[str]:
        """Which of `routes` (advertised by `node`) the policy's autoApprovers approve."""
        return auto_approved(node, routes, self.resolver)

    def explain(self, src_node_id: int, dst_node_id: int, port: int, proto: str = "tcp") -> Explanation:
        from .explain import explain

        return explain(self, src_node_id, dst_node_id, port, proto)


def _reaches(resolved: Resolved, route: IPNetwork, as_dst: bool = False) -> bool:
    if is_exit_route(route):
        # "*" as a destination lets its sources use exit nodes; as a source it does not.
        return resolved.internet or resolved.danger_all or (as_dst and resolved.star)
    return resolved.star or resolved.danger_all or any(
        p.version == route.version and p.overlaps(route) for p in resolved.prefixes)  # type: ignore[arg-type]


DEFAULT_RULE = NetRule("acls", 0, '{"action": "accept", "dst": ["*:*"], "src": ["*"]}', ("*",),
                       (Target("*", (), ALL_PORTS),), ("*",))
_EMPTY_POLICY = Policy({}, {}, {}, [], [], {}, [], [], [], [], {}, {})


def compile_policy(policy: Policy | None, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> CompiledPolicy:
    """Resolve `policy` against the tailnet; `None` (no policy) allows everything."""
    return CompiledPolicy(policy, users, nodes)
