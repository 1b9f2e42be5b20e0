"""``GET /api/v1/policy/explain``: may one node reach another on a port, and which rule decides?

Answered from the running server's own compiled policy and node store (what its peers' packet
filters are built from), so the answer is the one the tailnet enforces now, whatever
``policy.mode`` the policy came from. Nodes are named by ID, name or tailnet IP.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from headscale_core.api.base import Endpoint, Handlers, ok
from headscale_core.errors import InvalidRequest, NotFound
from headscale_core.policy.ports import PROTOCOLS
from headscale_core.state.model import Node

EXPLANATION = {
    "allowed": "boolean", "reason": "string", "port": "integer", "proto": "string",
    "srcId": "string", "srcName": "string", "srcAddresses": "string[]",
    "dstId": "string", "dstName": "string", "dstAddresses": "string[]",
    # the deciding rule: "acls" or "grants", its index there and its JSON text; "", null, "" when none
    "ruleKind": "string", "ruleIndex": "integer", "ruleText": "string",
}
PORTLESS_PROTOCOLS = frozenset(name for name, number in PROTOCOLS.items() if number not in (6, 17, 132))


class ExplainHandlers(Handlers):
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/policy/explain", self.explain, "ExplainPolicy",
                     "Whether the policy lets node src reach node dst on port/proto, and the rule that decides",
                     query=("src", "dst", "port", "proto"), response=EXPLANATION),
        ]

    async def explain(self, request: web.Request) -> web.Response:
        query = request.query
        src = self.find_node(query.get("src", ""), "src")
        dst = self.find_node(query.get("dst", ""), "dst")
        proto = parse_proto(query.get("proto", "") or "tcp")
        port = parse_port(query.get("port", ""), proto)
        answer: dict[str, Any] = {
            "srcId": str(src.id), "srcName": src.given_name, "srcAddresses": _ips(src),
            "dstId": str(dst.id), "dstName": dst.given_name, "dstAddresses": _ips(dst),
            "port": port, "proto": proto, "ruleKind": "", "ruleIndex": None, "ruleText": ""}
        compiled = self.state.policy.compiled()
        if compiled is None:
            return ok({**answer, "allowed": True,
                       "reason": "allowed: there is no policy, so every node may reach every other"})
        if compiled.policy is not None and not compiled.policy.has_rules:
            return ok({**answer, "allowed": True,
                       "reason": "allowed: the policy has no acls or grants, so Tailscale's default allows all"})
        verdict = compiled.explain(src.id, dst.id, port, proto)
        if verdict.rule_index is not None:
            answer.update(ruleKind=verdict.rule_kind, ruleIndex=verdict.rule_index, ruleText=verdict.rule_text)
        return ok({**answer, "allowed": verdict.allowed, "reason": str(verdict)})

    def find_node(self, ref: str, what: str) -> Node:
        """A node by ID, tailnet IP, or name (its given name, else its hostname)."""
        ref = ref.strip()
        if not ref:
            raise InvalidRequest(f"{what} is required: a node ID, name or tailnet IP")
        nodes = self.state.nodes()
        if ref.isdigit():
            return self.state.node(int(ref))
        try:
            ip = ipaddress.ip_address(ref.strip("[]"))
        except ValueError:
            pass
        else:
            for node in nodes:
                if any(ipaddress.ip_address(a) == ip for a in _ips(node)):
                    return node
            raise NotFound(f"{what}: no node has the address {ref}: list nodes with `headscale nodes list`")
        for field in ("given_name", "hostname"):
            matches = [n for n in nodes if getattr(n, field).lower() == ref.lower()]
            if len(matches) == 1:
                return matches[0]
            if matches:
                ids = ", ".join(str(n.id) for n in matches)
                raise InvalidRequest(f"{what}: {len(matches)} nodes are called {ref!r} (IDs {ids}): name one by ID")
        raise NotFound(f"{what}: no node is called {ref!r}: list nodes with `headscale nodes list`")


def parse_proto(text: str) -> str:
    name = text.strip().lower()
    if name in PROTOCOLS or (name.isdigit() and 0 < int(name) < 256):
        return name
    known = ", ".join(sorted(PROTOCOLS))
    raise InvalidRequest(f"proto {text!r} is not a protocol: use a number 1-255 or one of {known}")


def parse_port(text: str, proto: str) -> int:
    if not text and proto in PORTLESS_PROTOCOLS:
        return 0
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise InvalidRequest(f"port {text!r} is not a port number 0-65535 (it is required for {proto})")
    return int(text)


def _ips(node: Node) -> list[str]:
    return [ip for ip in (node.ipv4, node.ipv6) if ip]
