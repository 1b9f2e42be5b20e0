"""Route steering by `via` grants: which subnet routes a viewer gets through which router.

A grant with `via: [tag:x]` sends its sources' traffic for the destination subnets through the
routers tagged `tag:x`, whichever router is primary for that subnet. For one viewer and one peer
this decides, per route the peer serves:

- include: the peer is the via router (the lowest-id one when several carry the tag);
- exclude: another router is the via router, so the viewer must not route there;
- use_primary: a plain grant also reaches the route, so ordinary primary election decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .aliases import Resolver
from .filter import PreparedRule
from .ipset import EXIT_ROUTES, IPNetwork


@dataclass
class ViaRoutes:
    include: list[IPNetwork] = field(default_factory=list)
    exclude: list[IPNetwork] = field(default_factory=list)
    use_primary: list[IPNetwork] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)


def via_routes(rules: list[PreparedRule], resolver: Resolver, viewer: int, peer: int) -> ViaRoutes:
    out = ViaRoutes()
    if viewer == peer:
        return out
    mine = [rule for rule in rules if resolver.node_in_src(viewer, rule.src)]
    steering = [rule for rule in mine if rule.via]
    if not steering:
        return out
    peer_tags = set(resolver.nodes[peer].tags)
    for rule in steering:
        matched = [r for r in resolver.subnet_routes(peer) if any(_overlaps(p, r) for p in rule.dst.prefixes)]
        if rule.dst.internet and peer in resolver.exit_nodes():
            matched += [r for r in resolver.routes[peer] if r in EXIT_ROUTES]
        (out.include if rule.via & peer_tags else out.exclude).extend(matched)
    if not out:
        return out
    for rule in steering:
        for route in list(out.include):
            if not any(_overlaps(p, route) for p in rule.dst.prefixes):
                continue
            winner = min((nid for nid in resolver.nodes
                          if rule.via.intersection(resolver.nodes[nid].tags) and route in resolver.routes[nid]),
                         default=None)
            if winner is not None and winner != peer:
                out.include = [r for r in out.include if r != route]
                if route not in out.exclude:
                    out.exclude.append(route)
    for rule in mine:
        if rule.via:
            continue
        for prefix in rule.dst.prefixes:
            out.use_primary.extend(r for r in out.include if _overlaps(prefix, r) and r not in out.use_primary)
            out.exclude = [r for r in out.exclude if not _overlaps(prefix, r)]
    return out


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]
