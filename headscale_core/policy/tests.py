"""The policy's own `tests` (reachability) and `sshTests`, run against a topology.

A policy whose tests fail is rejected; Tailscale reports that as "test(s) failed", and the
messages returned here say which entry failed and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .compiled import CompiledPolicy, compile_policy
from .explain import deciding_rule, proto_number
from .ipset import IPAddress, parse_network
from .model import PolicyNode, PolicyUser
from .parse import Policy
from .ports import PROTOCOLS
from .sshtests import run_ssh_tests


def run_policy_tests(policy: Policy, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> list[str]:
    """Failures of the policy's `tests` and `sshTests`, one message each; empty when all pass."""
    compiled = compile_policy(policy, users, nodes)
    failures: list[str] = []
    for index, test in enumerate(policy.tests):
        failures.extend(f"tests[{index}]: {msg}" for msg in _run_test(compiled, test))
    failures.extend(run_ssh_tests(compiled, policy.ssh_tests))
    return failures


def _run_test(compiled: CompiledPolicy, test: dict[str, Any]) -> list[str]:
    src = test.get("src") or ""
    src_ips = _alias_ips(compiled, src, allow_prefix=True)
    if not src_ips:
        return [f"src {src!r} matches no device or address"]
    proto_text = test.get("proto") or "tcp"
    if str(proto_text).lower() not in PROTOCOLS and not str(proto_text).isdigit():
        return [f"unknown proto {proto_text!r}"]
    proto = proto_number(proto_text)
    out = []
    for expect, entries in (("accept", test.get("accept") or []), ("deny", test.get("deny") or [])):
        for entry in entries:
            alias, _, port_text = entry.rpartition(":")
            if alias.startswith("[") and alias.endswith("]"):  # [IPv6]:port
                alias = alias[1:-1]
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                out.append(f"{expect} {entry!r}: the port must be a single number 1-65535")
                continue
            dst_ips = _alias_ips(compiled, alias, allow_prefix=False)
            if not dst_ips:
                out.append(f"{expect} {entry!r}: matches no single device or address")
                continue
            allowed = [deciding_rule(compiled.prepared, compiled.resolver, s, d, int(port_text), proto) is not None
                       for s in src_ips for d in dst_ips if s.version == d.version]
            if expect == "accept" and not (allowed and all(allowed)):
                out.append(f"{src} -> {entry} ({proto_text}) is denied, the test expects accept")
            if expect == "deny" and any(allowed):
                out.append(f"{src} -> {entry} ({proto_text}) is accepted, the test expects deny")
    return out


def _alias_ips(compiled: CompiledPolicy, alias: str, allow_prefix: bool) -> list[IPAddress]:
    """Addresses a test alias stands for; empty when it names nothing usable."""
    r = compiled.resolver
    policy = r.policy
    if alias.startswith("tag:") and alias not in policy.tag_owners:
        return []
    if alias.startswith("group:") and alias not in policy.groups:
        return []
    if alias.startswith("autogroup:") and alias not in ("autogroup:member", "autogroup:tagged"):
        return []
    if alias.startswith(("tag:", "group:", "autogroup:")) or "@" in alias:
        nodes = r.resolve(alias).nodes
        return [n.network_address for nid in sorted(nodes) for n in r.node_nets[nid]]
    text = policy.hosts.get(alias, alias)
    try:
        net = parse_network(text)
    except ValueError:
        return []
    if "/" in text and not allow_prefix:
        return []
    return [net.network_address]
