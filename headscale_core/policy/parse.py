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

from .model import PolicyError, located
from .ports import PortRange, parse_ip_spec, parse_port_list, parse_proto, split_alias_port
from .validate import (
    check_alias,
    check_app,
    check_groups,
    check_host,
    check_ip_dst_for_app,
    check_ip_pool,
    check_route_prefix,
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
    """Parse and validate a policy document; raises `PolicyError` with the location at fault.

    `tailnet_domains` are the email domains that belong to the tailnet; when given,
    `user:*@domain` and `localpart:*@domain` must name one of them (Tailscale's rule).
    """
    raw = load_hujson(text) if isinstance(text, str) else text
    if not isinstance(raw, dict):
        raise PolicyError("policy must be a JSON object")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise PolicyError(f"unknown field {unknown[0]!r}", location=unknown[0])
    groups = {k: list(v or []) for k, v in _object(raw, "groups").items()}
    tag_owners = {k: list(v or []) for k, v in _object(raw, "tagOwners").items()}
    for tag in tag_owners:
        with located(f'tagOwners["{tag}"]'):
            check_tag_name(tag)
    check_groups(groups)
    hosts = dict(_object(raw, "hosts"))
    for name, value in hosts.items():
        with located(f'hosts["{name}"]'):
            check_host(value)
    domains = None if tailnet_domains is None else frozenset(tailnet_domains)
    ctx = _Ctx(groups, tag_owners, hosts, domains)
    rules = [_acl(i, a, ctx) for i, a in enumerate(_entries(raw, "acls"))]
    rules += [_grant(i, g, ctx) for i, g in enumerate(_entries(raw, "grants"))]
    from .ssh_parse import parse_ssh_rules, parse_ssh_tests

    ssh = parse_ssh_rules(_entries(raw, "ssh"), ctx)
    auto_routes, auto_exit = _auto_approvers(_object(raw, "autoApprovers"))
    node_attrs = [_node_attr(i, a, ctx) for i, a in enumerate(_entries(raw, "nodeAttrs"))]
    tests = _entries(raw, "tests")
    ssh_tests = _entries(raw, "sshTests")
    parse_ssh_tests(ssh_tests, ctx)
    return Policy(
        groups=groups,
        tag_owners=tag_owners,
        hosts=hosts,
        rules=rules,
        ssh=ssh,
        auto_routes=auto_routes,
        auto_exit=auto_exit,
        node_attrs=node_attrs,
        tests=tests,
        ssh_tests=ssh_tests,
        postures={k: list(v or []) for k, v in _object(raw, "postures").items()},
        raw=raw,
    )


@dataclass(frozen=True)
class _Ctx:
    groups: dict[str, list[str]]
    tag_owners: dict[str, list[str]]
    hosts: dict[str, str]
    tailnet_domains: frozenset[str] | None = None


# Shape checks: Tailscale's JSON decoder refuses these before validation; without them a
# string where a list belongs would be read one character at a time.

def _object(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise PolicyError(f"must be a JSON object, not {_kind(value)}", location=key)
    return value


def _entries(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """A section that is a list of objects (`acls`, `grants`, `ssh`...)."""
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise PolicyError(f"must be a list of objects, not {_kind(value)}", location=key)
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise PolicyError(f"must be a JSON object, not {_kind(entry)}", location=f"{key}[{index}]")
    return value


def strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    """A list-of-strings field of a rule; `where` is the rule's location (`acls[2]`)."""
    return string_list(entry.get(key), f"{where}.{key}")


def string_list(value: Any, location: str) -> list[str]:
    value = value or []
    if not isinstance(value, list):
        raise PolicyError(f"must be a list of strings, not {_kind(value)}", location=location)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"must be a string, not {_kind(item)}", location=f"{location}[{index}]")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number")


def _auto_approvers(approvers: dict[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    routes = approvers.get("routes") or {}
    if not isinstance(routes, dict):
        raise PolicyError(f"must be a JSON object, not {_kind(routes)}", location="autoApprovers.routes")
    out: dict[str, list[str]] = {}
    for prefix, owners in routes.items():
        where = f'autoApprovers.routes["{prefix}"]'
        with located(where):
            check_route_prefix(prefix)
        out[prefix] = string_list(owners, where)
    return out, strings(approvers, "exitNode", "autoApprovers")


def _acl(index: int, acl: dict[str, Any], ctx: _Ctx) -> NetRule:
    where = f"acls[{index}]"
    action = acl.get("action", "")
    if action != "accept":
        raise PolicyError(f"action={action!r} is not supported".replace("'", '"'), location=f"{where}.action")
    srcs = tuple(strings(acl, "src", where))
    for j, src in enumerate(srcs):
        with located(f"{where}.src[{j}]"):
            check_alias(src, "src", ctx)
    with located(f"{where}.proto"):
        protos = parse_proto(acl.get("proto", ""), f"{where}.proto")
    targets = []
    for j, dst in enumerate(strings(acl, "dst", where)):
        with located(f"{where}.dst[{j}]"):
            alias, port_text = split_alias_port(dst)
            try:
                ports = parse_port_list(port_text)
            except PolicyError as exc:
                raise PolicyError(f'dst="{dst}": {exc.message}') from None
            check_alias(alias, "dst", ctx)
        targets.append(Target(alias, protos, ports))
    with located(where):
        _check_self_sources(srcs, [t.alias for t in targets], where)
    return NetRule("acls", index, _text(acl), srcs, tuple(targets), tuple(t.alias for t in targets),
                   src_posture=tuple(strings(acl, "srcPosture", where)))


def _grant(index: int, grant: dict[str, Any], ctx: _Ctx) -> NetRule:
    where = f"grants[{index}]"
    srcs = tuple(strings(grant, "src", where))
    dsts = tuple(strings(grant, "dst", where))
    ip_specs = strings(grant, "ip", where)
    app = grant.get("app") or {}
    if not isinstance(app, dict):
        raise PolicyError(f"must be a JSON object, not {_kind(app)}", location=f"{where}.app")
    if not ip_specs and not app:
        raise PolicyError("ip and app can not both be empty", location=where)
    for j, src in enumerate(srcs):
        with located(f"{where}.src[{j}]"):
            check_alias(src, "src", ctx)
    for j, dst in enumerate(dsts):
        with located(f"{where}.dst[{j}]"):
            check_alias(dst, "dst", ctx)
            if dst == "autogroup:danger-all":
                raise PolicyError("cannot use autogroup:danger-all as a dst")
            check_ip_dst_for_app(dst)
    via = tuple(strings(grant, "via", where))
    for j, v in enumerate(via):
        if v.startswith("tag:") and v not in ctx.tag_owners:
            raise PolicyError(f'tag "{v}" not found', location=f"{where}.via[{j}]")
    if app:
        check_app(app, dsts, f"{where}.app")
    specs = []
    for j, spec in enumerate(ip_specs):
        with located(f"{where}.ip[{j}]"):
            specs.append(parse_ip_spec(spec))
    targets = tuple(Target(d, protos, ports) for d in dsts for protos, ports in specs)
    with located(where):
        _check_self_sources(srcs, list(dsts), where, grant=True)
    return NetRule("grants", index, _text(grant), srcs, targets, dsts, dict(app), via,
                   tuple(strings(grant, "srcPosture", where)))


def _check_self_sources(srcs: tuple[str, ...], dsts: list[str], where: str, grant: bool = False) -> None:
    if "autogroup:self" in srcs:
        raise PolicyError('"autogroup:self" not valid on the src side of a rule',
                          location=f"{where}.src[{srcs.index('autogroup:self')}]")
    if "autogroup:self" not in dsts:
        return
    # An ACL may pair "*" with autogroup:self (narrowed per node); a grant may not, as "*"
    # includes tagged nodes.
    for j, src in enumerate(srcs):
        if not ((src == "*" and not grant) or src.startswith("group:") or "@" in src or src == "autogroup:member"):
            raise PolicyError("autogroup:self can only be used with users, groups, or supported autogroups",
                              location=f"{where}.src[{j}]")


def _node_attr(index: int, entry: dict[str, Any], ctx: _Ctx) -> NodeAttr:
    where = f"nodeAttrs[{index}]"
    targets = tuple(strings(entry, "target", where))
    for j, target in enumerate(targets):
        if target == "autogroup:self":
            raise PolicyError("internal server error", location=f"{where}.target[{j}]")
        if target.startswith("tag:") and target not in ctx.tag_owners:
            raise PolicyError(f'tag not found: "{target}"', location=f"{where}.target[{j}]")
    with located(f"{where}.ipPool"):
        for pool in strings(entry, "ipPool", where):
            check_ip_pool(pool, index)
    app = entry.get("app") or {}
    if not isinstance(app, dict):
        raise PolicyError(f"must be a JSON object, not {_kind(app)}", location=f"{where}.app")
    return NodeAttr(index, targets, tuple(strings(entry, "attr", where)), dict(app))


def _text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)
