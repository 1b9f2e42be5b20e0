"""HuJSON policy text -> a validated `Policy`.

This is the only place that looks at the raw document. Everything the compiler needs is
normalised here (ACLs and grants become `NetRule`s, ports become ranges, protocols become
numbers), and every mistake is reported with the rule and field at fault, in Tailscale's
wording where its service has one.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import json5

from .model import PolicyError
from .ports import PortRange, parse_ip_spec, parse_port_list, parse_proto, split_alias_port
from .validate import (
    check_alias,
    check_app,
    check_groups,
    check_ip_dst_for_app,
    check_ip_pool,
    check_tag_name,
)

TOP_LEVEL_KEYS = frozenset({
    "groups", "tagOwners", "hosts", "acls", "grants", "ssh", "autoApprovers", "nodeAttrs", "tests",
    "sshTests", "postures", "defaultSrcPosture", "randomizeClientPort", "ipsets", "derpMap",
    "disableIPv4", "OneCGNATRoute", "attrs",
})


@dataclass(frozen=True)
class Target:
    """One destination of a network rule: an alias with the protocols and ports it opens."""

    alias: str
    protos: tuple[int, ...]
    ports: tuple[PortRange, ...]


@dataclass(frozen=True)
class NetRule:
    """An ACL entry or a grant, in one shape."""

    kind: str  # "acls" or "grants"
    index: int
    text: str
    srcs: tuple[str, ...]
    targets: tuple[Target, ...]
    dsts: tuple[str, ...]
    app: dict[str, list[Any]] = field(default_factory=dict)
    via: tuple[str, ...] = ()
    src_posture: tuple[str, ...] = ()


@dataclass(frozen=True)
class SSHRule:
    index: int
    action: str  # "accept" or "check"
    srcs: tuple[str, ...]
    dsts: tuple[str, ...]
    users: tuple[str, ...]
    check_period: float | None  # seconds; None = service default
    accept_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeAttr:
    index: int
    targets: tuple[str, ...]
    attrs: tuple[str, ...]
    app: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Policy:
    groups: dict[str, list[str]]
    tag_owners: dict[str, list[str]]
    hosts: dict[str, str]
    rules: list[NetRule]
    ssh: list[SSHRule]
    auto_routes: dict[str, list[str]]
    auto_exit: list[str]
    node_attrs: list[NodeAttr]
    tests: list[dict[str, Any]]
    ssh_tests: list[dict[str, Any]]
    postures: dict[str, list[str]]
    raw: dict[str, Any]

    @property
    def has_rules(self) -> bool:
        return "acls" in self.raw or "grants" in self.raw


def load_hujson(text: str) -> Any:
    try:
        # Most stored policies are plain JSON; json5 is two orders of magnitude slower.
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json5.loads(text)
    except ValueError as exc:
        raise PolicyError(f"parsing policy: {exc}") from exc


def parse_policy(text: str | dict[str, Any], tailnet_domains: Collection[str] | None = None) -> Policy:
    """Parse and validate a policy document; raises `PolicyError`.

    `tailnet_domains` are the email domains that belong to the tailnet; when given,
    `user:*@domain` and `localpart:*@domain` must name one of them (Tailscale's rule).
    """
    raw = load_hujson(text) if isinstance(text, str) else text
    if not isinstance(raw, dict):
        raise PolicyError("policy must be a JSON object")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise PolicyError(f"unknown field {unknown[0]!r}")
    groups = {k: list(v or []) for k, v in (raw.get("groups") or {}).items()}
    tag_owners = {k: list(v or []) for k, v in (raw.get("tagOwners") or {}).items()}
    for tag in tag_owners:
        check_tag_name(tag)
    check_groups(groups)
    hosts = dict(raw.get("hosts") or {})
    domains = None if tailnet_domains is None else frozenset(tailnet_domains)
    ctx = _Ctx(groups, tag_owners, hosts, domains)
    rules = [_acl(i, a, ctx) for i, a in enumerate(raw.get("acls") or [])]
    rules += [_grant(i, g, ctx) for i, g in enumerate(raw.get("grants") or [])]
    from .ssh_parse import parse_ssh_rules, parse_ssh_tests

    ssh = parse_ssh_rules(raw.get("ssh") or [], ctx)
    approvers = raw.get("autoApprovers") or {}
    node_attrs = [_node_attr(i, a, ctx) for i, a in enumerate(raw.get("nodeAttrs") or [])]
    tests = list(raw.get("tests") or [])
    ssh_tests = list(raw.get("sshTests") or [])
    parse_ssh_tests(ssh_tests, ctx)
    return Policy(
        groups=groups,
        tag_owners=tag_owners,
        hosts=hosts,
        rules=rules,
        ssh=ssh,
        auto_routes={k: list(v or []) for k, v in (approvers.get("routes") or {}).items()},
        auto_exit=list(approvers.get("exitNode") or []),
        node_attrs=node_attrs,
        tests=tests,
        ssh_tests=ssh_tests,
        postures={k: list(v or []) for k, v in (raw.get("postures") or {}).items()},
        raw=raw,
    )


@dataclass(frozen=True)
class _Ctx:
    groups: dict[str, list[str]]
    tag_owners: dict[str, list[str]]
    hosts: dict[str, str]
    tailnet_domains: frozenset[str] | None = None


def _acl(index: int, acl: dict[str, Any], ctx: _Ctx) -> NetRule:
    action = acl.get("action", "")
    if action != "accept":
        raise PolicyError(f"action={action!r} is not supported".replace("'", '"'))
    srcs = tuple(acl.get("src") or [])
    for src in srcs:
        check_alias(src, "src", ctx)
    protos = parse_proto(acl.get("proto", ""), f"acls[{index}].proto")
    targets = []
    for dst in acl.get("dst") or []:
        alias, port_text = split_alias_port(dst)
        try:
            ports = parse_port_list(port_text)
        except PolicyError as exc:
            raise PolicyError(f'dst="{dst}": {exc.message}') from None
        check_alias(alias, "dst", ctx)
        targets.append(Target(alias, protos, ports))
    _check_self_sources(srcs, [t.alias for t in targets])
    return NetRule("acls", index, _text(acl), srcs, tuple(targets), tuple(t.alias for t in targets),
                   src_posture=tuple(acl.get("srcPosture") or []))


def _grant(index: int, grant: dict[str, Any], ctx: _Ctx) -> NetRule:
    srcs = tuple(grant.get("src") or [])
    dsts = tuple(grant.get("dst") or [])
    ip_specs = grant.get("ip") or []
    app = grant.get("app") or {}
    if not ip_specs and not app:
        raise PolicyError("ip and app can not both be empty")
    for src in srcs:
        check_alias(src, "src", ctx)
    for dst in dsts:
        check_alias(dst, "dst", ctx)
        if dst == "autogroup:danger-all":
            raise PolicyError("cannot use autogroup:danger-all as a dst")
        check_ip_dst_for_app(dst)
    via = tuple(grant.get("via") or [])
    for v in via:
        if v.startswith("tag:") and v not in ctx.tag_owners:
            raise PolicyError(f'tag "{v}" not found')
    if app:
        check_app(app, dsts)
    specs = [parse_ip_spec(s) for s in ip_specs]
    targets = tuple(Target(d, protos, ports) for d in dsts for protos, ports in specs)
    _check_self_sources(srcs, list(dsts), grant=True)
    return NetRule("grants", index, _text(grant), srcs, targets, dsts, dict(app), via,
                   tuple(grant.get("srcPosture") or []))


def _check_self_sources(srcs: tuple[str, ...], dsts: list[str], grant: bool = False) -> None:
    if "autogroup:self" in srcs:
        raise PolicyError('"autogroup:self" not valid on the src side of a rule')
    if "autogroup:self" not in dsts:
        return
    # An ACL may pair "*" with autogroup:self (narrowed per node); a grant may not, as "*"
    # includes tagged nodes.
    allowed = all((s == "*" and not grant) or s.startswith("group:") or "@" in s or s == "autogroup:member"
                  for s in srcs)
    if not allowed:
        raise PolicyError("autogroup:self can only be used with users, groups, or supported autogroups")


def _node_attr(index: int, entry: dict[str, Any], ctx: _Ctx) -> NodeAttr:
    targets = tuple(entry.get("target") or [])
    for target in targets:
        if target == "autogroup:self":
            raise PolicyError("internal server error")
        if target.startswith("tag:") and target not in ctx.tag_owners:
            raise PolicyError(f'tag not found: "{target}"')
    for pool in entry.get("ipPool") or []:
        check_ip_pool(pool, index)
    return NodeAttr(index, targets, tuple(entry.get("attr") or []), dict(entry.get("app") or {}))


def _text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)
