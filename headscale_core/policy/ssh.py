"""`ssh` rules -> the tailcfg SSHPolicy a destination node receives.

Principals are source node addresses. `localpart:*@domain` users map each source user to the
local account named like their email's local part, so rules using it are split per source user.
The client evaluates rules first-match-wins; Tailscale sends `check` rules ahead of `accept`
rules, so the stricter action decides when both match.
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
        action = dict(ACCEPT_ACTION) if rule.action == "accept" else {
            "holdAndDelegate": CHECK_URL.format(base=check_base_url)}
        out.extend(_rules_for(nid, rule, action, resolver))
    # Stable: policy order is kept within each action.
    out.sort(key=lambda r: "holdAndDelegate" not in r["action"])
    return {"rules": out}


def _rules_for(nid: int, rule: SSHRule, action: dict[str, Any], resolver: Resolver) -> list[dict[str, Any]]:
    node = resolver.nodes[nid]
    src = resolver.resolve_all(rule.srcs)
    sources = [s for s in sorted(resolver.nodes) if resolver.node_in_src(s, src)]
    if not sources:
        return []
    localpart = bool(localpart_domains(rule.users))
    out: list[dict[str, Any]] = []
    if "autogroup:self" in rule.dsts and not node.tags and node.user_id is not None:
        own = [s for s in sources if not resolver.nodes[s].tags and resolver.nodes[s].user_id == node.user_id]
        if own:
            out.extend(_user_rules(own, node.user_id, rule, action, resolver))
    plain_dsts = [d for d in rule.dsts if d != "autogroup:self"]
    if not plain_dsts:
        return out
    if nid in resolver.matching_nodes(resolver.resolve_all(plain_dsts), as_source=True):
        if not localpart:
            return out + [_rule(_principals(sources, resolver), _base_users(rule.users), action, rule)]
        for user_id, members in _by_source_user(sources, resolver):
            out.extend(_user_rules(members, user_id, rule, action, resolver))
    elif localpart and nid in sources:
        # A localpart rule also lets each source log in to itself (as Tailscale compiles it).
        if node.tags:
            out.extend(_user_rules([nid], None, rule, action, resolver))
        else:
            own = [s for s in sources if not resolver.nodes[s].tags and resolver.nodes[s].user_id == node.user_id]
            out.extend(_user_rules(own, node.user_id, rule, action, resolver))
    return out


def _user_rules(members: list[int], user_id: int | None, rule: SSHRule, action: dict[str, Any],
                resolver: Resolver) -> list[dict[str, Any]]:
    """The common rule for `members`, then their user's localpart rule if that user has one."""
    principals = _principals(members, resolver)
    out = [_rule(principals, _base_users(rule.users), action, rule)]
    user = resolver.users.get(user_id) if user_id is not None else None
    if user is not None:
        local, _, domain = user.email.partition("@")
        if domain and domain.lower() in {d.lower() for d in localpart_domains(rule.users)}:
            out.append(_rule(principals, {local: local}, action, rule))
    return out


def localpart_domains(users: tuple[str, ...]) -> list[str]:
    """Domains of the canonical `localpart:*@domain` entries; other `localpart:` text is a login name."""
    return [u.removeprefix("localpart:*@") for u in users if is_localpart(u)]


def is_localpart(user: str) -> bool:
    return user.startswith("localpart:*@") and len(user) > len("localpart:*@")


def ssh_sources(nid: int, rule: SSHRule, resolver: Resolver) -> list[int]:
    """Source nodes that may SSH into node `nid` under `rule` (empty when `nid` is no destination)."""
    found: list[int] = []
    for compiled_rule in _rules_for(nid, rule, {}, resolver):
        for principal in compiled_rule["principals"]:
            src = resolver.node_by_ip(_ip(principal["nodeIP"]))
            if src is not None and src not in found:
                found.append(src)
    return sorted(found)


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def _base_users(users: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    if "autogroup:nonroot" in users:
        mapping["*"] = "="
    for user in users:
        if user not in ("autogroup:nonroot", "root") and not is_localpart(user):
            mapping[user] = user
    mapping["root"] = "root" if "root" in users else ""
    return mapping


def _by_source_user(sources: list[int], resolver: Resolver) -> list[tuple[int | None, list[int]]]:
    groups: dict[int | None, list[int]] = {}
    for nid in sources:
        node = resolver.nodes[nid]
        groups.setdefault(None if node.tags else node.user_id, []).append(nid)
    return sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))


def _principals(members: list[int], resolver: Resolver) -> list[dict[str, str]]:
    """Node addresses; Tailscale lists a tagged node once per tag it carries."""
    out: list[dict[str, str]] = []
    for m in members:
        copies = max(1, len(resolver.nodes[m].tags))
        out.extend({"nodeIP": str(net.network_address)} for _ in range(copies) for net in resolver.node_nets[m])
    return out


def _rule(principals: list[dict[str, str]], users: dict[str, str], action: dict[str, Any],
          rule: SSHRule) -> dict[str, Any]:
    out: dict[str, Any] = {"principals": principals, "sshUsers": users, "action": action}
    if rule.accept_env:
        out["acceptEnv"] = list(rule.accept_env)
    return out
