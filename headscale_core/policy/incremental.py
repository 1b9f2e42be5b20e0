"""Recompiling after one node changed (tags, user, addresses, routes), reusing what it cannot touch.

A rule is re-resolved only when one of its aliases now resolves differently (or, when the node's
addresses or routes moved, when it names addresses at all). A node's cached filter or peer set is
dropped only when it is a source or destination of such a rule before or after the change, or
shares a user with the changed node; every other node keeps its cached answers.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .aliases import Resolved, Resolver
from .filter import PreparedRule, prepare
from .model import PolicyNode

if TYPE_CHECKING:
    from .compiled import CompiledPolicy

Edge = tuple[frozenset[int], frozenset[int], PreparedRule]


def with_node_changed(old: CompiledPolicy, node: PolicyNode) -> CompiledPolicy:
    before = old.resolver.nodes.get(node.id)
    new = copy.copy(old)
    new.nodes = tuple(node if n.id == node.id else n for n in old.nodes)
    if before is None:
        new.nodes += (node,)
    new.resolver = resolver = old.resolver.with_node(node)
    for cached in ("_edges", "_primaries"):
        new.__dict__.pop(cached, None)
    new._capmaps = {nid: caps for nid, caps in old._capmaps.items() if nid != node.id}
    old_edges: list[Edge] | None = old.__dict__.get("_edges")
    if before is None or old_edges is None:
        # A new node can fall under "*" and every autogroup: start afresh.
        new.prepared = [prepare(rule.rule, resolver) for rule in old.prepared]
        new._filters, new._peers = {}, {}
        return new

    changed = _changed_rules(old, resolver, before, node)
    new.prepared = [prepare(rule.rule, resolver) if i in changed else rule for i, rule in enumerate(old.prepared)]
    edges = list(old_edges)
    for i in changed:
        edges[i] = new.edges_of(new.prepared[i])
    new.__dict__["_edges"] = edges

    stale = {node.id}
    same_user = _user_nodes(old.resolver, before) | _user_nodes(resolver, node)
    # autogroup:self is resolved per node from its user's devices, which no alias text shows.
    if any(rule.self_dst for rule in old.prepared) and (
            (before.tags, before.user_id, before.addresses) != (node.tags, node.user_id, node.addresses)):
        stale |= same_user
    stale_filters, stale_peers = set(stale), set(stale)
    for i in changed:
        for srcs, dsts, rule in (old_edges[i], edges[i]):
            # A filter holds the rules naming its node as destination (or, for companion
            # capabilities, as source); the peer set follows both ends.
            stale_filters |= dsts | (srcs if rule.companion_caps else frozenset())
            stale_peers |= srcs | dsts
            if rule.self_dst:
                stale_filters |= same_user
                stale_peers |= same_user
    new._filters = {nid: rules for nid, rules in old._filters.items() if nid not in stale_filters}
    new._peers = {nid: peers for nid, peers in old._peers.items() if nid not in stale_peers}
    return new


def _changed_rules(old: CompiledPolicy, resolver: Resolver, before: PolicyNode, after: PolicyNode) -> set[int]:
    moved = before.addresses != after.addresses
    rerouted = old.resolver.routes[after.id] != resolver.routes[after.id]
    retagged = set(before.tags) ^ set(after.tags)
    verdict: dict[str, bool] = {}

    def alias_changed(alias: str) -> bool:
        if alias not in verdict:
            was, now = old.resolver.resolve(alias), resolver.resolve(alias)
            verdict[alias] = was != now or (moved and after.id in was.nodes | now.nodes) or (
                (rerouted or moved) and _names_addresses(now))
        return verdict[alias]

    changed = set()
    for i, rule in enumerate(old.prepared):
        aliases = (*rule.rule.srcs, *rule.rule.dsts)
        if any(alias_changed(a) for a in aliases) or (rule.via and (retagged or rerouted)):
            changed.add(i)
    return changed


def _names_addresses(resolved: Resolved) -> bool:
    """Does the alias reach anything through routes (prefixes, "*", the internet)?"""
    return bool(resolved.prefixes) or resolved.star or resolved.internet or resolved.danger_all


def _user_nodes(resolver: Resolver, node: PolicyNode) -> frozenset[int]:
    if node.tags or node.user_id is None:
        return frozenset()
    return resolver.user_nodes(node.user_id)
