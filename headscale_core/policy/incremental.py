"""Recompiling after nodes joined or changed (tags, user, addresses, routes), reusing what they
cannot touch.

A rule is re-resolved only when one of its aliases now resolves differently (or, when a node's
addresses or routes moved, when it names addresses at all). A node's cached filter or peer set is
dropped only when it is a source or destination of such a rule before or after the change, or
shares a user with a changed node; every other node keeps its cached answers, the very same
objects, so a caller can tell "unchanged" by identity. A registration storm is one call per batch:
the new nodes join together.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from .aliases import Resolved, Resolver
from .filter import PreparedRule, prepare
from .model import PolicyNode

if TYPE_CHECKING:
    from .compiled import CompiledPolicy

Edge = tuple[frozenset[int], frozenset[int], PreparedRule]
# Per-topology caches that are recomputed on first use after any change.
DERIVED = ("_edges", "_primaries", "_ssh")


def with_nodes_changed(old: CompiledPolicy, nodes: Sequence[PolicyNode]) -> CompiledPolicy:
    latest = {node.id: node for node in nodes}  # a node named twice: its last version counts
    nodes = list(latest.values())
    befores = {node.id: old.resolver.nodes.get(node.id) for node in nodes}
    new = copy.copy(old)
    new.resolver = resolver = old.resolver.with_nodes(nodes)
    for cached in DERIVED:
        new.__dict__.pop(cached, None)
    ids = frozenset(latest)
    old_edges: list[Edge] | None = old.__dict__.get("_edges")
    if old_edges is None:
        new.prepared = [prepare(rule.rule, resolver) for rule in old.prepared]
        new._filters, new._peers, new._capmaps, new._addresses = {}, {}, {}, {}
        new.stale_nodes = None
        return new

    verdict = _alias_verdicts(old, resolver, befores, nodes)
    changed = {i for i, rule in enumerate(old.prepared)
               if any(verdict(a) for a in (*rule.rule.srcs, *rule.rule.dsts))
               or (rule.via and _via_moved(old, resolver, befores, nodes))}
    new.prepared = [prepare(rule.rule, resolver) if i in changed else rule for i, rule in enumerate(old.prepared)]
    edges = list(old_edges)
    for i in changed:
        edges[i] = new.edges_of(new.prepared[i])
    new.__dict__["_edges"] = edges

    same_user: set[int] = set()  # the changed nodes' users' devices, before and after
    stale: set[int] = set(ids)
    self_dst = any(rule.self_dst for rule in old.prepared)
    for node in nodes:
        before = befores[node.id]
        users = _user_nodes(resolver, node) | (_user_nodes(old.resolver, before) if before else frozenset())
        same_user |= users
        # autogroup:self is resolved per node from its user's devices, which no alias text shows.
        if self_dst and (before is None or (before.tags, before.user_id, before.addresses)
                         != (node.tags, node.user_id, node.addresses)):
            stale |= users
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
    # Copy (at C speed) and drop the stale: a join must not pay a Python loop over the tailnet.
    new._filters = _without(old._filters, stale_filters)
    new._peers = _without(old._peers, stale_peers)
    new._addresses = _without(old._addresses, {(nid, no_v4) for nid in ids for no_v4 in (False, True)})
    policy = old.policy
    attrs_moved = policy is not None and any(verdict(t) for entry in policy.node_attrs for t in entry.targets)
    new._capmaps = {} if attrs_moved else _without(old._capmaps, ids)
    # SSH policies and CapMaps are not tracked per node: with either in play, anyone may have changed.
    new.stale_nodes = None if attrs_moved or (policy is not None and policy.ssh) else frozenset(
        stale_filters | stale_peers)
    return new


def _without(cache: dict[Any, Any], stale: AbstractSet[Any]) -> dict[Any, Any]:
    """A copy of ``cache`` without the keys in ``stale``."""
    if len(stale) * 4 > len(cache):
        return {key: value for key, value in cache.items() if key not in stale}
    out = dict(cache)
    for key in stale:
        out.pop(key, None)
    return out


def _alias_verdicts(old: CompiledPolicy, resolver: Resolver, befores: dict[int, PolicyNode | None],
                    nodes: Sequence[PolicyNode]):  # type: ignore[no-untyped-def]
    """``verdict(alias)``: may the alias name something else after the change?"""
    moved = {n.id for n in nodes if befores[n.id] is None or befores[n.id].addresses != n.addresses}  # type: ignore[union-attr]
    rerouted = any(old.resolver.routes.get(n.id, ()) != resolver.routes[n.id] for n in nodes)
    verdicts: dict[str, bool] = {}

    def verdict(alias: str) -> bool:
        if alias not in verdicts:
            # An alias no changed node can belong to keeps its resolution object (see
            # Resolver.with_nodes): the identity test answers most of a large policy at once.
            was, now = old.resolver.resolve(alias), resolver.resolve(alias)
            verdicts[alias] = (was is not now and was != now) or (
                bool(moved) and not (moved.isdisjoint(was.nodes) and moved.isdisjoint(now.nodes))) or (
                (rerouted or bool(moved)) and _names_addresses(now))
        return verdicts[alias]

    return verdict


def _via_moved(old: CompiledPolicy, resolver: Resolver, befores: dict[int, PolicyNode | None],
               nodes: Sequence[PolicyNode]) -> bool:
    """Can a via grant steer differently: some node's tags or routes changed?"""
    for node in nodes:
        before = befores[node.id]
        if (set(before.tags) if before else set()) ^ set(node.tags):
            return True
        if old.resolver.routes.get(node.id, ()) != resolver.routes[node.id]:
            return True
    return False


def _names_addresses(resolved: Resolved) -> bool:
    """Does the alias reach anything through routes (prefixes, "*", the internet)?"""
    return bool(resolved.prefixes) or resolved.star or resolved.internet or resolved.danger_all


def _user_nodes(resolver: Resolver, node: PolicyNode) -> frozenset[int]:
    if node.tags or node.user_id is None:
        return frozenset()
    return resolver.user_nodes(node.user_id)
