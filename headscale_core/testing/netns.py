"""Network namespaces that keep real Tailscale clients off the real network.

Every test that runs a Tailscale client runs inside a namespace with no route out
(docs/testing.md, rule 1). `scripts/test` puts the whole pytest run in one; the helpers that start
clients call `require_isolated_netns()` first. `NetnsLab` builds several "hosts" with their own
addresses (``ip netns add`` + veth pairs + a bridge in a hub namespace) for tests that need them.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import subprocess
import uuid
from collections.abc import Callable

_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_RTF_UP = 0x1
_RTF_REJECT = 0x200


class NotIsolatedError(RuntimeError):
    """Raised when a Tailscale client would be started where it can reach the real network."""


def _netns_id(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # PID 1's namespace links are unreadable without CAP_SYS_PTRACE
        return None


def _interface_is_up(name: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", name.encode()[:15], 0)
        flags: int = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
    return bool(flags & _IFF_UP)


def _has_default_route() -> bool:
    # /proc/self/net follows the calling process's network namespace (unlike /sys/class/net).
    # A namespace with only loopback has an IPv6 ::/0 *reject* route on lo: that is no way out.
    with open("/proc/self/net/route") as routes:
        for line in list(routes)[1:]:
            _iface, destination, _, flags, *_rest, mask = line.split()[:8]
            if destination == mask == "00000000" and int(flags, 16) & _RTF_UP:
                return True
    try:
        with open("/proc/self/net/ipv6_route") as routes6:
            for line in routes6:
                destination, prefix_len, *_middle, flags, iface = line.split()
                usable = int(flags, 16) & _RTF_UP and not int(flags, 16) & _RTF_REJECT
                if destination == "0" * 32 and prefix_len == "00" and usable and iface != "lo":
                    return True
    except FileNotFoundError:  # IPv6 disabled
        pass
    return False


def _hairpin_veths() -> set[str]:
    """veth interfaces whose peer is in this same namespace: a wire from here to here.

    ``ip -o link`` prints ``link-netns``/``link-netnsid`` for a veth whose peer lives in
    another namespace; a pair created and kept inside the test namespace has neither, so
    nothing sent on it can leave.
    """
    try:
        out = subprocess.run(["ip", "-o", "-d", "link", "show", "type", "veth"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    names = set()
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if "link-netns" not in line:
            names.add(name)
    return names


def isolation_problems() -> list[str]:
    """Why this process is not in a loopback-only network namespace; empty when it is.

    A hairpin veth pair (both ends here, see `_hairpin_veths`) is allowed: older clients
    (1.90) treat a namespace with only ``lo`` as offline, and `scripts/test` gives them one
    with an address from the RFC 2544 lab range, which routes nowhere but back here.
    """
    problems = []
    ours, init = _netns_id("self"), _netns_id("1")
    if ours is not None and ours == init:
        problems.append(f"the process shares PID 1's network namespace ({ours})")
    hairpins = _hairpin_veths()
    up = [name for _, name in socket.if_nameindex()
          if name != "lo" and name not in hairpins and _interface_is_up(name)]
    if up:
        problems.append(f"non-loopback interfaces are up: {', '.join(up)}")
    if _has_default_route():
        problems.append("there is a default route")
    return problems


def in_isolated_netns() -> bool:
    """True in a network namespace of its own that has only loopback up and no default route."""
    return not isolation_problems()


def require_isolated_netns(check: Callable[[], list[str]] = isolation_problems) -> None:
    """Raise `NotIsolatedError` unless the process is in a loopback-only network namespace."""
    problems = check()
    if problems:
        raise NotIsolatedError(
            "refusing to start a Tailscale client outside an isolated network namespace ("
            + "; ".join(problems)
            + "). Run the tests with `scripts/test`, or wrap the command in "
            "`unshare -rn -- sh -c 'ip link set lo up && ...'`."
        )


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetnsLab:
    """Hosts in named network namespaces, joined by a bridge on 10.77.0.0/24.

    The bridge lives in a hub namespace of its own, so the caller's namespace keeps only
    loopback. Names carry a per-lab random tag, so parallel runs do not collide; `teardown()`
    deletes them all. Needs CAP_SYS_ADMIN and a mount namespace of the test run's own, which
    `scripts/test` provides (``unshare --net --mount``).
    """

    subnet = "10.77.0"

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.hub = f"hub-{self.tag}"
        self.hosts: dict[str, str] = {}  # host name -> address
        _ip("netns", "add", self.hub)
        self._in(self.hub, "link", "set", "lo", "up")
        self._in(self.hub, "link", "add", "br0", "type", "bridge")
        self._in(self.hub, "link", "set", "br0", "up")

    def _in(self, netns: str, *args: str) -> None:
        _ip("-n", netns, *args)

    def add_host(self, name: str) -> str:
        """Create namespace ``<name>-<tag>`` wired to the bridge; return its address."""
        index = len(self.hosts) + 1
        netns, address = f"{name}-{self.tag}", f"{self.subnet}.{index}"
        outer, inner = f"v{self.tag}{index}", f"h{self.tag}{index}"
        _ip("netns", "add", netns)
        self._in(netns, "link", "set", "lo", "up")
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", self.hub)
        _ip("link", "set", inner, "netns", netns)
        self._in(self.hub, "link", "set", outer, "master", "br0", "up")
        self._in(netns, "addr", "add", f"{address}/24", "dev", inner)
        self._in(netns, "link", "set", inner, "up")
        self.hosts[name] = address
        return address

    def command(self, name: str, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside host ``name``."""
        return ["ip", "netns", "exec", f"{name}-{self.tag}", *argv]

    def teardown(self) -> None:
        for name in list(self.hosts):
            subprocess.run(["ip", "netns", "delete", f"{name}-{self.tag}"], capture_output=True)
        subprocess.run(["ip", "netns", "delete", self.hub], capture_output=True)
        self.hosts.clear()


def free_loopback_port(low: int = 20000, high: int = 32000) -> int:
    """A TCP+UDP port on 127.0.0.1 that is free now, below the kernel's ephemeral range."""
    for _ in range(200):
        port = random.randint(low, high)
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {low}-{high}")
