"""The timed phases, each against a running server and a fleet of simulated nodes.

A phase returns a flat dict of figures (seconds, CPU-seconds of the server process, bytes
counted at the load generator) plus ``problems``: the nodes whose peer table did not end
exactly as expected. Phases run in order on the same tailnet; each one leaves it converged.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.loadgen import Fleet, SimNode, Watch
from benchmarks.loadgen.peertable import Peer
from benchmarks.servers import BenchServer

Visibility = Callable[[Fleet], dict[int, set[int]]]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


@dataclass
class Bench:
    """What a phase needs: the server, the fleet, who should see whom, and the time limits."""

    server: BenchServer
    fleet: Fleet
    visibility: Visibility
    timeout: float = 120.0
    change_rate: float = 10.0
    changes: int = 50
    idle_seconds: float = 60.0
    rss_empty_kb: int = 0
    notes: list[str] = field(default_factory=list)

    def expected(self) -> dict[int, set[int]]:
        return self.visibility(self.fleet)

    def converged(self, expected: Mapping[int, set[int]]) -> Callable[[], bool]:
        """Every registered node has applied its first map and holds as many peers as expected
        (nodes that failed to register are reported by the phase, not waited for)."""
        nodes = self.fleet.nodes

        def check() -> bool:
            return self.fleet.idle and all(
                n.node_id is not None and len(n.table.peers) == len(expected.get(n.node_id, ()))
                for n in nodes if n.registered)

        return check

    async def wait_converged(self, expected: Mapping[int, set[int]] | None = None,
                             timeout: float | None = None) -> bool:
        """Wait until every node holds exactly its expected peers with their current endpoints.

        ``expected=None``: recompute it from the fleet on each check (a node's ID is known only
        once its first map has been applied, which lags its arrival in a storm).
        Counting peers is cheap and checked often; a random sample of whole tables is checked
        once the counts agree, and every table once the sample does (a million peers at N=1,000).
        """
        fleet = self.fleet
        deadline = time.perf_counter() + (self.timeout if timeout is None else timeout)
        rng = random.Random(0)
        while time.perf_counter() < deadline:
            want = self.expected() if expected is None else expected
            if self.converged(want)():
                sample = rng.sample(fleet.nodes, min(20, len(fleet.nodes)))
                if not fleet.verify(want, sample) and not fleet.verify(want):
                    return True
            await asyncio.sleep(0.05)
        return False

    async def settle_and_verify(self, expected: Mapping[int, set[int]] | None = None) -> list[str]:
        expected = expected if expected is not None else self.expected()
        await self.wait_converged(expected)
        await self.fleet.settle()
        return self.fleet.verify(expected)


def _cpu_between(before: os.times_result, after: os.times_result) -> float:
    """This process's CPU seconds (user and kernel) between two ``os.times()``."""
    return after.user + after.system - before.user - before.system


def problems_summary(problems: list[str]) -> dict[str, Any]:
    return {"problems": len(problems), "problem_examples": problems[:3]}


async def registration_storm(b: Bench) -> dict[str, Any]:
    """All nodes register with a reusable pre-auth key (64 at a time) and start map polls."""
    fleet = b.fleet
    registered: list[float] = []

    async def join(node: SimNode) -> None:
        await node.dial(fleet.url, fleet.server_public)
        await node.register()
        registered.append(time.perf_counter())
        node.start_poll(fleet.deliver)

    cpu0 = b.server.sample().cpu_seconds
    loadgen0 = os.times()
    start = time.perf_counter()
    # A large tailnet gets at least 0.1 s per node to register (5,000 nodes: 500 s).
    errors = await fleet.gather(fleet.nodes, join, timeout=max(b.timeout, len(fleet.nodes) / 10))
    got_maps = await fleet.wait_until(lambda: all(n.first_map_at for n in fleet.nodes if n.registered), b.timeout)
    maps_done = time.perf_counter()
    all_see_all = await b.wait_converged()
    expected = b.expected()
    converged_at = time.perf_counter()
    cpu = b.server.sample().cpu_seconds - cpu0
    await fleet.settle()
    problems = fleet.verify(expected)
    n = len(fleet.nodes)
    reg_span = (max(registered) - start) if registered else float("nan")
    loadgen1 = os.times()
    return {
        "nodes": n,
        "register_errors": len(errors),
        "registrations_per_s": round(len(registered) / reg_span, 1) if registered else 0.0,
        "all_initial_maps_s": round(maps_done - start, 3) if got_maps else None,
        "converged_s": round(converged_at - start, 3) if all_see_all else None,
        "server_cpu_s": round(cpu, 3),
        # Dialling, handshakes, full maps and every delta of the storm, on one core: when it is
        # near the phase's length, the load generator and not the server set the pace.
        "loadgen_cpu_s": round(_cpu_between(loadgen0, loadgen1), 3),
        "bytes_total": fleet.bytes_received(),
        "peak_rss_mb": round(b.server.sample().hwm_kb / 1024, 1),
        **problems_summary(errors[:3] + problems),
    }


async def reconnect_storm(b: Bench) -> dict[str, Any]:
    """Every node drops its connection, then all redial at once (a server restart, seen from
    the clients); the time from dial to first map message, per node."""
    fleet = b.fleet
    await fleet.gather(fleet.nodes, SimNode.disconnect, concurrency=len(fleet.nodes))
    await asyncio.sleep(1.0)
    cpu0 = b.server.sample().cpu_seconds
    bytes0 = fleet.bytes_received()
    start = time.perf_counter()
    errors = await fleet.gather(fleet.nodes, fleet.redial, concurrency=256, timeout=b.timeout)
    got_maps = await fleet.wait_until(lambda: all(n.first_map_at for n in fleet.nodes), b.timeout)
    maps_done = time.perf_counter()
    cpu = b.server.sample().cpu_seconds - cpu0
    per_node = [n.first_map_at - n.dialed_at for n in fleet.nodes if n.first_map_at]
    problems = await b.settle_and_verify()
    return {
        "initial_map_p50_ms": ms(pct(per_node, 50)),
        "initial_map_p95_ms": ms(pct(per_node, 95)),
        "initial_map_p99_ms": ms(pct(per_node, 99)),
        "initial_map_max_ms": ms(max(per_node, default=float("nan"))),
        "all_initial_maps_s": round(maps_done - start, 3) if got_maps else None,
        "server_cpu_s": round(cpu, 3),
        "bytes_total": fleet.bytes_received() - bytes0,
        "peak_rss_mb": round(b.server.sample().hwm_kb / 1024, 1),
        **problems_summary(errors[:3] + problems),
    }


async def steady_idle(b: Bench) -> dict[str, Any]:
    """Everyone connected, nothing changes: keep-alives only."""
    fleet = b.fleet
    settle_s = await _server_quiet(b)
    first = b.server.sample()
    keepalives0 = sum(n.keepalives for n in fleet.nodes)
    await asyncio.sleep(b.idle_seconds)
    last = b.server.sample()
    connected = sum(1 for n in fleet.nodes if n.client is not None)
    return {
        "seconds": b.idle_seconds,
        "cpu_s_per_min": round((last.cpu_seconds - first.cpu_seconds) * 60 / b.idle_seconds, 3),
        "cpu_pct_of_core": round(100 * (last.cpu_seconds - first.cpu_seconds) / b.idle_seconds, 2),
        "rss_mb": round(last.rss_kb / 1024, 1),
        "rss_kb_per_node": round((last.rss_kb - b.rss_empty_kb) / max(connected, 1), 1),
        "keepalives": sum(n.keepalives for n in fleet.nodes) - keepalives0,
        "settle_s": settle_s,
        **problems_summary([]),
    }


async def _server_quiet(b: Bench, limit: float = 60.0) -> float:
    """Wait until the server has used under 2% of a core in each of two consecutive seconds, so
    the idle figures do not include the tail of the previous phase (write-behind of a thousand
    nodes' endpoints, audit records, online-state fan-out); the seconds waited."""
    start = time.perf_counter()
    quiet = 0
    last = b.server.sample().cpu_seconds
    while quiet < 2 and time.perf_counter() - start < limit:
        await asyncio.sleep(1.0)
        now = b.server.sample().cpu_seconds
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now
    return round(time.perf_counter() - start, 1)


def _recipients(expected: Mapping[int, set[int]], node_id: int) -> list[int]:
    return [viewer for viewer, peers in expected.items() if node_id in peers]


async def _propagate(b: Bench, changers: list[SimNode], send_at: list[float],
                     mutate: Callable[[SimNode, int], Callable[[Peer | None], bool]]) -> dict[str, Any]:
    """Change each of ``changers`` at its offset in ``send_at`` through a lite update and time
    until every peer that should see it does."""
    fleet = b.fleet
    expected = b.expected()
    by_id = fleet.by_id()
    fleet.clear_watches()
    watches = []
    for k, node in enumerate(changers):
        assert node.node_id is not None
        watches.append(Watch(f"c{k}", node.node_id, mutate(node, k)))
    fleet.watch(watches)
    # Worked out before the first change, not while the last one's deliveries are being read.
    targets = [(f"c{k}", [by_id[v] for v in _recipients(expected, n.node_id or 0) if v in by_id])
               for k, n in enumerate(changers)]
    sent: list[float] = [0.0] * len(changers)
    messages0 = {n.name: n.messages for n in fleet.nodes}
    bytes0 = fleet.bytes_received()
    sample0 = b.server.sample()
    loadgen0 = os.times()
    start = time.perf_counter()

    async def send(k: int, node: SimNode) -> None:
        await asyncio.sleep(max(0.0, start + send_at[k] - time.perf_counter()))
        sent[k] = time.perf_counter()
        await node.lite_update()

    results = await asyncio.gather(*(send(k, n) for k, n in enumerate(changers)), return_exceptions=True)
    errors = [f"{changers[k].name}: {r!r}" for k, r in enumerate(results) if isinstance(r, BaseException)]
    # Counts first (one per change): a full check of every recipient every 20 ms held the load
    # generator's loop for milliseconds while it should be reading the last deliveries.
    needed = [(name, len(rs)) for name, rs in targets]
    done = await fleet.wait_until(
        lambda: all(fleet.seen_counts[name] >= count for name, count in needed)
        and all(name in r.seen for name, rs in targets for r in rs), b.timeout)
    end = time.perf_counter()
    loadgen1 = os.times()
    sample1 = b.server.sample()
    cpu = sample1.cpu_seconds - sample0.cpu_seconds
    kernel = sample1.system_seconds - sample0.system_seconds
    await fleet.settle()
    delays: list[float] = []
    to_last: list[float] = []
    to_last_read: list[float] = []
    deliveries = 0
    missing = 0
    for k, (name, recipients) in enumerate(targets):
        seen = [r.seen[name] - sent[k] for r in recipients if name in r.seen]
        missing += len(recipients) - len(seen)
        deliveries += len(recipients)
        delays.extend(seen)
        if seen:
            to_last.append(max(seen))
            to_last_read.append(max(r.seen_read[name] - sent[k] for r in recipients if name in r.seen_read))
    per_node_msgs = [n.messages - messages0[n.name] for n in fleet.nodes]
    bytes_used = fleet.bytes_received() - bytes0
    problems = errors + ([f"{missing} of {deliveries} deliveries not seen within {b.timeout} s"] if missing else [])
    problems += fleet.verify(expected)
    fleet.clear_watches()
    return {
        "changes": len(changers),
        "recipients_per_change": round(deliveries / max(len(changers), 1), 1),
        "per_recipient_p50_ms": ms(pct(delays, 50)),
        "per_recipient_p99_ms": ms(pct(delays, 99)),
        "to_last_peer_p50_ms": ms(pct(to_last, 50)),
        "to_last_peer_p99_ms": ms(pct(to_last, 99)),
        # The same, timed when the one-core load generator read and applied the last delivery
        # rather than when it reached that node's socket: the instrument's own backlog included.
        "to_last_peer_read_p50_ms": ms(pct(to_last_read, 50)),
        "to_last_peer_read_p99_ms": ms(pct(to_last_read, 99)),
        "quiescence_s": round(end - start, 3) if done else None,
        "server_cpu_ms_per_change": round(1000 * cpu / max(len(changers), 1), 2),
        "server_cpu_s": round(cpu, 3),
        # Of that, the kernel's part: on loopback a send runs both ends' TCP (and wakes the
        # receiver) in the sender's time, so this is the floor no server code can remove.
        "server_kernel_ms_per_change": round(1000 * kernel / max(len(changers), 1), 2),
        "loadgen_cpu_ms_per_change": round(1000 * _cpu_between(loadgen0, loadgen1) / max(len(changers), 1), 2),
        "loadgen_kernel_ms_per_change": round(1000 * (loadgen1.system - loadgen0.system) / max(len(changers), 1), 2),
        "bytes_per_recipient": round(bytes_used / max(deliveries, 1), 1),
        "messages_per_recipient_p50": statistics.median(per_node_msgs) if per_node_msgs else 0,
        **problems_summary(problems),
    }


def _new_endpoint(node: SimNode, k: int) -> Callable[[Peer | None], bool]:
    port = 20000 + (node.index * 7 + k * 131 + int(time.time())) % 40000
    marker = f"198.18.{node.index >> 8 & 255}.{node.index & 255}:{port}"
    node.endpoints = [marker, node.endpoints[-1]]
    return lambda peer: peer is not None and marker in peer.endpoints


async def endpoint_change(b: Bench) -> dict[str, Any]:
    """``changes`` nodes each move to a new endpoint, one every 1/``change_rate`` s."""
    nodes = b.fleet.nodes
    # Distinct nodes: a node changed twice would hide its first change from a peer that applies
    # both at once, and that change's watch would never fire.
    count = min(b.changes, len(nodes))
    step = max(1, len(nodes) // count)
    changers = [nodes[(k * step) % len(nodes)] for k in range(count)]
    return await _propagate(b, changers, [k / b.change_rate for k in range(len(changers))], _new_endpoint)


async def burst(b: Bench) -> dict[str, Any]:
    """100 nodes change endpoints within 100 ms: the messages per recipient show coalescing."""
    nodes = b.fleet.nodes
    count = min(100, len(nodes) // 2)
    changers = nodes[1 : 1 + count]
    return await _propagate(b, changers, [0.1 * k / count for k in range(count)], _new_endpoint)


async def hostinfo_change(b: Bench) -> dict[str, Any]:
    """Five nodes, one per second, report a new OS version (a whole-node change)."""
    nodes = b.fleet.nodes
    changers = [nodes[(k * 97 + 3) % len(nodes)] for k in range(5)]

    def mutate(node: SimNode, k: int) -> Callable[[Peer | None], bool]:
        marker = f"Debian 13.{k + 2} (trixie); kernel=6.12.{int(time.time()) % 1000}"
        node.hostinfo = {**node.hostinfo, "OSVersion": marker}
        return lambda peer: peer is not None and peer.os_version == marker

    return await _propagate(b, changers, [float(k) for k in range(len(changers))], mutate)


async def online_flap(b: Bench) -> dict[str, Any]:
    """One node drops its connection and comes back: when do its peers see it go and return?"""
    fleet = b.fleet
    node = fleet.nodes[len(fleet.nodes) // 2]
    assert node.node_id is not None
    recipients = [fleet.by_id()[v] for v in _recipients(b.expected(), node.node_id)]
    bytes0 = fleet.bytes_received()
    fleet.clear_watches()
    fleet.watch([Watch("offline", node.node_id, lambda p: p is not None and p.online is False),
                 Watch("online", node.node_id, lambda p: p is not None and p.online is True)])
    for r in recipients:
        r.seen.pop("online", None)
    start = time.perf_counter()
    await node.disconnect()
    offline = await fleet.wait_until(lambda: all("offline" in r.seen for r in recipients), min(b.timeout, 30))
    for r in recipients:
        r.seen.pop("online", None)
    back = time.perf_counter()
    await fleet.redial(node)
    online = await fleet.wait_until(lambda: all("online" in r.seen for r in recipients), min(b.timeout, 30))
    off_delays = [r.seen["offline"] - start for r in recipients if "offline" in r.seen]
    on_delays = [r.seen["online"] - back for r in recipients if "online" in r.seen]
    problems = [] if offline and online else [f"flap not seen by all peers (offline {offline}, online {online})"]
    problems += await b.settle_and_verify()
    fleet.clear_watches()
    return {
        "offline_seen_p50_ms": ms(pct(off_delays, 50)),
        "offline_seen_max_ms": ms(max(off_delays, default=float("nan"))),
        "online_seen_p50_ms": ms(pct(on_delays, 50)),
        "online_seen_max_ms": ms(max(on_delays, default=float("nan"))),
        "bytes_per_recipient": round((fleet.bytes_received() - bytes0) / max(len(recipients), 1), 1),
        **problems_summary(problems),
    }


async def policy_change(b: Bench, hidden_policy: str, restore_policy: str,
                        hidden_visibility: Visibility) -> dict[str, Any]:
    """Swap the policy so that 10% of the nodes become invisible to the rest, then back."""
    fleet = b.fleet
    figures: dict[str, Any] = {}
    problems: list[str] = []
    for label, text, visibility in (("hide", hidden_policy, hidden_visibility),
                                    ("restore", restore_policy, b.visibility)):
        expected = visibility(fleet)
        cpu0 = b.server.sample().cpu_seconds
        bytes0 = fleet.bytes_received()
        start = time.perf_counter()
        b.server.set_policy(text)
        ok = await b.wait_converged(expected)
        took = time.perf_counter() - start
        figures[f"{label}_converged_s"] = round(took, 3) if ok else None
        figures[f"{label}_server_cpu_s"] = round(b.server.sample().cpu_seconds - cpu0, 3)
        figures[f"{label}_bytes_per_node"] = round((fleet.bytes_received() - bytes0) / len(fleet.nodes), 1)
        await fleet.settle()
        problems += fleet.verify(expected)
    return {**figures, **problems_summary(problems)}
