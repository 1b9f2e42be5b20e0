"""Answering "may A reach B on this port?" from the prepared rules, with the rule that decided.

Used by `CompiledPolicy.explain` and by the policy's own `tests`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .aliases import Resolver
from .filter import PreparedRule, PreparedTarget
from .ipset import CGNAT, TAILNET_V6, IPAddress
from .model import Explanation
from .ports import PROTOCOLS

if TYPE_CHECKING:
    from .compiled import CompiledPolicy

DEFAULT_PROTOS = frozenset({1, 6, 17, 58})


def proto_number(proto: str | int) -> int:
    if isinstance(proto, int) or str(proto).isdigit():
        return int(proto)
    return PROTOCOLS[str(proto).lower()] if proto else 6


def deciding_rule(rules: list[PreparedRule], resolver: Resolver, src: IPAddress, dst: IPAddress,
                  port: int, proto: int) -> PreparedRule | None:
    """The first rule that lets `src` reach `dst:port` over `proto`, if any."""
    src_node = resolver.node_by_ip(src)
    dst_node = resolver.node_by_ip(dst)
    for rule in rules:
        if rule.src_ips.contains_ip(src) and any(
            _target_allows(t, resolver, dst, port, proto) for t in rule.targets
        ):
            return rule
        if rule.self_dst and src_node is not None and dst_node is not None:
            a, b = resolver.nodes[src_node], resolver.nodes[dst_node]
            if not a.tags and not b.tags and a.user_id == b.user_id and a.user_id is not None and (
                rule.src.star or src_node in rule.src.nodes
            ):
                ports = [t for t in rule.rule.targets if t.alias == "autogroup:self"]
                if any(_proto_ok(t.protos, proto) and any(p.contains(port) for p in t.ports) for t in ports):
                    return rule
    return None


def _proto_ok(protos: tuple[int, ...], proto: int) -> bool:
    return proto in protos if protos else proto in DEFAULT_PROTOS


def _target_allows(t: PreparedTarget, resolver: Resolver, dst: IPAddress, port: int, proto: int) -> bool:
    if not _proto_ok(t.protos, proto):
        return False
    if proto in (6, 17, 132) and not any(p.contains(port) for p in t.ports):
        return False
    d = t.resolved
    if d.star:
        return dst in CGNAT or dst in TAILNET_V6 or resolver.routed(dst)
    if d.danger_all:
        return True
    if d.internet:
        return dst.is_global
    if any(dst.version == n.version and dst in n for nid in d.nodes for n in resolver.node_nets[nid]):
        return True
    return any(dst.version == p.version and dst in p for p in d.prefixes)


def explain(compiled: CompiledPolicy, src_node_id: int, dst_node_id: int, port: int,
            proto: str = "tcp") -> Explanation:
    r = compiled.resolver
    number = proto_number(proto)
    for src_net in r.node_nets[src_node_id]:
        for dst_net in r.node_nets[dst_node_id]:
            if src_net.version != dst_net.version:
                continue
            rule = deciding_rule(compiled.prepared, r, src_net.network_address, dst_net.network_address,
                                 port, number)
            if rule is not None:
                return Explanation(True, rule.rule.index, rule.rule.kind, rule.rule.text)
    return Explanation(False)
