"""Time policy compilation for 1,000 nodes / 100 rules, and a recompute after one node's tags change.

Run: .venv/bin/python -m benchmarks.policy_compile (or through `python -m benchmarks run`)
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import replace

from headscale_core.policy import PolicyNode, PolicyUser, compile_policy, parse_policy

USERS = 50
NODES = 1000
TAGS = 20
RULES = 100


def topology() -> tuple[list[PolicyUser], list[PolicyNode]]:
    users = [PolicyUser(i, f"user{i}", f"user{i}@example.com") for i in range(1, USERS + 1)]
    nodes = []
    base4 = int(ipaddress.IPv4Address("100.64.0.1"))
    base6 = int(ipaddress.IPv6Address("fd7a:115c:a1e0::1"))
    for i in range(NODES):
        tagged = i % 3 == 0
        nodes.append(PolicyNode(
            id=i + 1, stable_id=f"n{i}", hostname=f"host{i}",
            ipv4=str(ipaddress.IPv4Address(base4 + i)), ipv6=str(ipaddress.IPv6Address(base6 + i)),
            user_id=None if tagged else 1 + i % USERS,
            tags=(f"tag:t{i % TAGS}",) if tagged else (),
            advertised_routes=(f"10.{i % 250}.0.0/16",) if i % 50 == 0 else (),
            approved_routes=(f"10.{i % 250}.0.0/16",) if i % 50 == 0 else (),
        ))
    return users, nodes


def policy_text() -> str:
    acls = []
    for r in range(RULES):
        src = [f"group:g{r % 10}"] if r % 2 else [f"tag:t{r % TAGS}"]
        dst = [f"tag:t{(r + 1) % TAGS}:{1000 + r}", f"10.{r % 250}.0.0/16:443"]
        acls.append({"action": "accept", "src": src, "dst": dst})
    return json.dumps({
        "groups": {f"group:g{g}": [f"user{u}@example.com" for u in range(1 + g, USERS + 1, 10)] for g in range(10)},
        "tagOwners": {f"tag:t{t}": ["group:g0"] for t in range(TAGS)},
        "acls": acls,
        "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
    })


def timed(label: str, fn, results: dict[str, float]):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = fn()
    results[label] = round(1000 * (time.perf_counter() - start), 2)
    return result


def measure() -> dict[str, float]:
    """Milliseconds of each step, by label (the runner's ``policy_compile`` scenario)."""
    results: dict[str, float] = {}
    users, nodes = topology()
    policy = timed("parse_ms", lambda: parse_policy(policy_text()), results)
    compiled = timed("compile_ms", lambda: compile_policy(policy, users, nodes), results)
    timed("packet_filters_all_nodes_ms", lambda: [compiled.packet_filter(n.id) for n in nodes], results)
    timed("visible_peers_all_nodes_ms", lambda: [compiled.visible_peers(n.id) for n in nodes], results)
    changed = replace(nodes[1], tags=("tag:t3",), user_id=None)
    recompiled = timed("recompute_one_node_tags_ms", lambda: compiled.with_node_changed(changed), results)
    timed("changed_node_filter_and_peers_ms", lambda: (recompiled.packet_filter(changed.id),
                                                        recompiled.visible_peers(changed.id)), results)
    # What a server does next: every node's filter and peers again, cached where unaffected.
    timed("all_nodes_after_change_ms", lambda: [(recompiled.packet_filter(n.id), recompiled.visible_peers(n.id))
                                                for n in nodes], results)
    return results


def main() -> None:
    print(f"{NODES} nodes, {RULES} rules")
    for label, value in measure().items():
        print(f"{label:48} {value:8.1f}")


if __name__ == "__main__":
    main()
