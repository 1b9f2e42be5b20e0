"""Address sets for the compiler: aliases resolve to these once, rules are built from them.

A set keeps the prefixes it was built from (so a destination can be written back the way the
policy named it) and answers overlap and containment questions for reduction and `explain`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CGNAT = ipaddress.ip_network("100.64.0.0/10")
CHROMEOS = ipaddress.ip_network("100.115.92.0/23")
TAILNET_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
EXIT_ROUTES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
# How Tailscale writes "every tailnet address" in SrcIPs: CGNAT minus the ChromeOS range, as two
# ranges, plus the tailnet ULA.
TAILNET_SRC_STRINGS = ("100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::/48")


def parse_network(text: str) -> IPNetwork:
    """An IP or CIDR as a network; raises ValueError when it is neither."""
    return ipaddress.ip_network(text, strict=False)


def is_exit_route(net: IPNetwork) -> bool:
    return net.prefixlen == 0


def format_ip(net: IPNetwork) -> str:
    """A prefix as FilterRule writes it: single hosts without their length."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


@dataclass(frozen=True)
class IPSet:
    """A set of prefixes; `tailnet` marks the `*` source (all tailnet addresses and routes)."""

    prefixes: frozenset[IPNetwork] = frozenset()
    tailnet: bool = False

    @staticmethod
    def of(nets: Iterable[IPNetwork]) -> IPSet:
        return IPSet(frozenset(nets))

    def __or__(self, other: IPSet) -> IPSet:
        return IPSet(self.prefixes | other.prefixes, self.tailnet or other.tailnet)

    def __bool__(self) -> bool:
        return bool(self.prefixes) or self.tailnet

    def contains_ip(self, ip: IPAddress) -> bool:
        if self.tailnet and (ip in CGNAT or ip in TAILNET_V6):
            return True
        return any(ip.version == n.version and ip in n for n in self.prefixes)

    def overlaps(self, net: IPNetwork) -> bool:
        if self.tailnet and (_overlap(net, CGNAT) or _overlap(net, TAILNET_V6)):
            return True
        return any(_overlap(net, n) for n in self.prefixes)

    def src_strings(self) -> list[str]:
        """The set as FilterRule.SrcIPs strings; Tailscale lists overlapping prefixes as they are."""
        out: list[str] = list(TAILNET_SRC_STRINGS) if self.tailnet else []
        out.extend(format_ip(n) for n in self.prefixes)
        return sorted(set(out))


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)  # type: ignore[arg-type]
