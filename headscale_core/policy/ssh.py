"""`ssh` rules -> the tailcfg SSHPolicy a destination node receives.

Principals are source node addresses. `localpart:*@domain` users map each source user to the
local account named like their email's local part, so rules using it are split per source user.
"""

from __future__ import annotations

from typing import Any

from .aliases import Resolver
from .parse import SSHRule

ACCEPT_ACTION = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}
CHECK_URL = "{base}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"


def node_ssh_policy(nid: int, rules: list[SSHRule], resolver: Resolver, check_base_url: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for rule in rules:
        sources = ssh_sources(nid, rule, resolver)
        if not sources:
            continue
        action = dict(ACCEPT_ACTION) if rule.action == "accept" else {
            "holdAndDelegate": CHECK_URL.format(base=check_base_url)}
        base_users = _base_users(rule.users)
        localparts = [u for u in rule.users if u.startswith("localpart:")]
        groups = _by_source_user(sources, resolver) if localparts else [(None, sources)]
        for user_id, members in groups:
            out.append(_rule(members, base_users, action, rule, resolver))
            user = resolver.users.get(user_id) if user_id is not None else None
            for lp in localparts:
                domain = lp.partition("@")[2].lower()
                if user is not None and user.email.lower().endswith("@" + domain):
                    local = user.email.partition("@")[0]
                    out.append(_rule(members, {local: local}, action, rule, resolver))
    return {"rules": out}


def ssh_sources(nid: int, rule: SSHRule, resolver: Resolver) -> list[int]:
    """Source nodes that may SSH into node `nid` under `rule` (empty when `nid` is no destination)."""
    node = resolver.nodes[nid]
    src = resolver.resolve_all(rule.srcs)
    sources: set[int] = set()
    plain_dsts = [d for d in rule.dsts if d != "autogroup:self"]
    if plain_dsts and nid in resolver.resolve_all(plain_dsts).nodes:
        sources |= src.nodes
    if "autogroup:self" in rule.dsts and not node.tags and node.user_id is not None:
        sources |= set(src.nodes) & resolver.user_nodes(node.user_id)
    return sorted(sources)


def _base_users(users: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    if "autogroup:nonroot" in users:
        mapping["*"] = "="
    for user in users:
        if user not in ("autogroup:nonroot", "root") and not user.startswith("localpart:"):
            mapping[user] = user
    mapping["root"] = "root" if "root" in users else ""
    return mapping


def _by_source_user(sources: list[int], resolver: Resolver) -> list[tuple[int | None, list[int]]]:
    groups: dict[int | None, list[int]] = {}
    for nid in sources:
        node = resolver.nodes[nid]
        groups.setdefault(None if node.tags else node.user_id, []).append(nid)
    return sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))


def _rule(members: list[int], users: dict[str, str], action: dict[str, Any], rule: SSHRule,
          resolver: Resolver) -> dict[str, Any]:
    out: dict[str, Any] = {
        "principals": [{"nodeIP": str(net.network_address)} for m in members for net in resolver.node_nets[m]],
        "sshUsers": users,
        "action": action,
    }
    if rule.accept_env:
        out["acceptEnv"] = list(rule.accept_env)
    return out
