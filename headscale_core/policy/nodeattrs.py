"""`nodeAttrs` -> the CapMap a node carries on its own `SelfNode` (and peers see on it).

Each `attr` string becomes a capability with no values; each `app` capability keeps its values,
which accumulate when several entries grant it. Besides these, the node's CapMap holds what the
server itself adds (admin/owner flags, feature switches), which is not the policy's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .aliases import Resolver
from .parse import NodeAttr

DISABLE_IPV4 = "disable-ipv4"
RANDOMIZE_CLIENT_PORT = "randomize-client-port"
# Funnel comes with the ports it may use and the client's warning when HTTPS is off.
IMPLIED_CAPS = {
    "funnel": ("https://tailscale.com/cap/funnel-ports?ports=443,8443,10000",
               "https://tailscale.com/cap/warn-funnel-no-https"),
}


def attr_targets(entry: NodeAttr, resolver: Resolver) -> frozenset[int]:
    """Nodes an entry applies to: named ones, and those whose address falls in a named prefix."""
    out: set[int] = set()
    for target in entry.targets:
        out |= resolver.matching_nodes(resolver.resolve(target), as_source=True)
    return frozenset(out)


def node_capmap(nid: int, entries: Sequence[NodeAttr], resolver: Resolver,
                randomize_client_port: bool = False) -> dict[str, list[Any]]:
    caps: dict[str, list[Any]] = {}
    if randomize_client_port:
        caps[RANDOMIZE_CLIENT_PORT] = []
    for entry in entries:
        if nid not in attr_targets(entry, resolver):
            continue
        for attr in entry.attrs:
            caps.setdefault(attr, [])
            for implied in IMPLIED_CAPS.get(attr, ()):
                caps.setdefault(implied, [])
        for name, values in entry.app.items():
            caps.setdefault(name, []).extend(values or [])
    return caps
