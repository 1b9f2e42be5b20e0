"""Route approval by `autoApprovers`.

A route a node advertises counts as approved when an admin approved it or when an
`autoApprovers.routes` entry covering it names the node (by tag, user or group); exit routes
are approved only through `autoApprovers.exitNode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .ipset import is_exit_route, parse_network
from .model import PolicyNode

if TYPE_CHECKING:
    from .aliases import Resolver


def approver_matches(alias: str, node: PolicyNode, resolver: Resolver) -> bool:
    if alias.startswith("tag:"):
        return alias in node.tags
    if node.tags or node.user_id is None:
        return False
    if alias.startswith("group:"):
        return node.user_id in resolver.group_users(alias)
    if alias == "autogroup:member":
        return True
    return node.user_id in resolver.user_ids(alias)


def auto_approved(node: PolicyNode, routes: Sequence[str], resolver: Resolver) -> list[str]:
    """The subset of `routes` the policy's autoApprovers approve for `node`."""
    policy = resolver.policy
    out = []
    for text in routes:
        route = parse_network(text)
        if is_exit_route(route):
            ok = any(approver_matches(a, node, resolver) for a in policy.auto_exit)
        else:
            ok = any(
                route.version == parse_network(prefix).version
                and route.subnet_of(parse_network(prefix))  # type: ignore[arg-type]
                and any(approver_matches(a, node, resolver) for a in approvers)
                for prefix, approvers in policy.auto_routes.items()
            )
        if ok:
            out.append(text)
    return out
