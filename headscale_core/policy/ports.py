"""Ports and protocols as the policy writes them (`22`, `80,443`, `1000-2000`, `*`, `tcp:22`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .model import PolicyError

PROTOCOLS = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "sctp": 132, "fc": 133,
}


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def as_json(self) -> dict[str, int]:
        """The range as FilterRule writes it: one dict per range, shared by every filter that
        names it (filters are only encoded, never modified)."""
        return self._json

    @cached_property
    def _json(self) -> dict[str, int]:
        return {"First": self.first, "Last": self.last}

    def contains(self, port: int) -> bool:
        return self.first <= port <= self.last


ALL_PORTS = (PortRange(0, 65535),)


def split_alias_port(dst: str) -> tuple[str, str]:
    """`alias:ports` -> (alias, ports); the port part is after the last colon."""
    alias, sep, ports = dst.rpartition(":")
    if not sep:
        raise PolicyError(f'dst="{dst}": missing port, use "{dst}:*" for all ports')
    if alias.startswith("[") and alias.endswith("]"):
        alias = alias[1:-1]
    return alias, ports


def parse_port_list(text: str) -> tuple[PortRange, ...]:
    if text == "*":
        return ALL_PORTS
    return tuple(_parse_range(part) for part in text.split(","))


def _parse_range(text: str) -> PortRange:
    first_text, _, last_text = text.partition("-")
    first = _port(first_text, text, "first")
    last = _port(last_text, text, "last") if last_text else first
    if first == 0:
        raise PolicyError(f"port range \"{text}\": first port must be >0, or use '*' for wildcard")
    if last < first:
        raise PolicyError(f'port range "{text}": last port {last} is below the first port {first}')
    return PortRange(first, last)


def _port(text: str, whole: str, which: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise PolicyError(f'port range "{whole}": invalid {which} integer')
    return int(text)


def parse_proto(text: str | int, where: str) -> tuple[int, ...]:
    """A protocol name or number; empty means the client's default set (TCP, UDP, ICMP)."""
    if text in ("", None):
        return ()
    if isinstance(text, int) or str(text).isdigit():
        number = int(text)
        if not 0 < number < 256:
            raise PolicyError(f"{where}: protocol number {number} is out of range 1-255")
        return (number,)
    if text == "*":
        return ()
    name = str(text).lower()
    if name not in PROTOCOLS:
        raise PolicyError(f"{where}: unknown protocol {text!r}")
    return (PROTOCOLS[name],)


def parse_ip_spec(spec: str) -> tuple[tuple[int, ...], tuple[PortRange, ...]]:
    """A grant `ip` entry: `*`, `22`, `tcp:22`, `udp:*`, `icmp:*`."""
    if spec == "*":
        return (), ALL_PORTS
    proto_text, sep, port_text = spec.rpartition(":")
    if not sep:
        return (), parse_port_list(spec)
    return parse_proto(proto_text, f"ip {spec!r}"), parse_port_list(port_text)
