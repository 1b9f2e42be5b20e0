"""Node address allocation from ``prefixes.v4``/``v6``: sequential or random, never reused
while a node holds an address, skipping addresses Tailscale reserves."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_RESERVED_V4 = (ipaddress.ip_network("100.100.100.100/32"), ipaddress.ip_network("100.115.92.0/23"))


class AddressPoolExhausted(Exception):
    pass


class IPAllocator:
    def __init__(self, network: IPNetwork, *, strategy: str = "sequential", seed: int | None = None) -> None:
        self.network = network
        self.strategy = strategy
        self._used: set[int] = set()
        self._next = int(network.network_address) + 1
        self._rand = random.Random(seed)
        self._first = int(network.network_address) + 1
        self._last = int(network.broadcast_address) - (1 if network.version == 4 else 0)

    def reserve(self, addresses: Iterable[str | None]) -> None:
        for text in addresses:
            if text:
                addr = ipaddress.ip_address(text)
                if addr in self.network:
                    self._used.add(int(addr))

    def release(self, text: str | None) -> None:
        if text:
            self._used.discard(int(ipaddress.ip_address(text)))

    def _usable(self, value: int) -> bool:
        if value in self._used or not self._first <= value <= self._last:
            return False
        addr = ipaddress.ip_address(value)
        return not (addr.version == 4 and any(addr in net for net in _RESERVED_V4))

    def allocate(self) -> str:
        size = self._last - self._first + 1
        if self.strategy == "random":
            for _ in range(64):
                value = self._first + self._rand.randrange(size)
                if self._usable(value):
                    return self._take(value)
        value = self._next
        for _ in range(min(size, len(self._used) + 1024)):
            if value > self._last:
                value = self._first
            if self._usable(value):
                self._next = value + 1
                return self._take(value)
            value += 1
        for value in range(self._first, self._last + 1):  # dense pool: exhaustive scan
            if self._usable(value):
                return self._take(value)
        raise AddressPoolExhausted(f"no free address left in {self.network}: widen prefixes or delete unused nodes")

    def _take(self, value: int) -> str:
        self._used.add(value)
        return str(ipaddress.ip_address(value))
