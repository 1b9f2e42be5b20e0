"""Incremental recompilation after a batch of joins or changes equals a full compile.

Each policy below is compiled for a small tailnet, every per-node answer is asked once (so the
caches are warm and can go wrong), then a batch of nodes joins or changes together; every
answer of the incremental result must equal a fresh compile of the new tailnet.
"""

from __future__ import annotations

import random

import pytest

from headscale_core.policy import PolicyNode, PolicyUser, compile_policy, parse_policy

USERS = [PolicyUser(1, "odin", "odin@example.com"),
         PolicyUser(2, "thor", "thor@example.org"), PolicyUser(3, "loki", "loki@example.net")]
TAGS = ('"tagOwners": {"tag:server": ["odin@example.com"], "tag:router": ["odin@example.com"],'
        ' "tag:exit": ["odin@example.com"]},'
        ' "groups": {"group:eng": ["odin@example.com", "loki@example.net"]}')
POLICIES = {
    "allow-all": '"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]',
    "per-user-and-servers": '"acls": [' + ",".join(
        f'{{"action": "accept", "src": ["{u}"], "dst": ["{u}:*", "tag:server:*"]}}'
        for u in ("odin@example.com", "thor@example.org", "loki@example.net")) + "]",
    "self-and-prefixes": '"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},'
                         '{"action": "accept", "src": ["100.64.0.0/16"], "dst": ["tag:server:22", "10.0.0.0/8:*"]},'
                         '{"action": "accept", "src": ["tag:router"], "dst": ["thor@example.org:80"]}]',
    "grants-via-and-attrs": '"grants": [{"src": ["autogroup:member"], "dst": ["10.33.0.0/16"], "ip": ["*"],'
                            ' "via": ["tag:router"]},'
                            '{"src": ["group:eng"], "dst": ["autogroup:internet"], "ip": ["*"]},'
                            '{"src": ["*"], "dst": ["tag:server"], "ip": ["tcp:443"]}],'
                            '"nodeAttrs": [{"target": ["tag:server"], "attr": ["disable-ipv4"]}],'
                            '"autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router"]},'
                            ' "exitNode": ["tag:exit"]}',
    "ssh": '"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],'
           '"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],'
           ' "users": ["autogroup:nonroot"]},'
           '{"action": "check", "src": ["group:eng"], "dst": ["tag:server"], "users": ["root"]}]',
}


def make_node(nid: int, rng: random.Random) -> PolicyNode:
    kind = rng.choice(["user", "user", "user", "server", "router", "exit"])
    v4, v6 = f"100.64.{nid // 250}.{nid % 250 + 1}", f"fd7a:115c:a1e0::{nid:x}"
    if kind == "user":
        return PolicyNode(nid, f"n{nid}", f"host{nid}", v4, v6, rng.choice([1, 2, 3]))
    if kind == "server":
        return PolicyNode(nid, f"n{nid}", f"host{nid}", v4, v6, None, tags=("tag:server",))
    if kind == "router":
        return PolicyNode(nid, f"n{nid}", f"host{nid}", v4, v6, None, tags=("tag:router",),
                          advertised_routes=("10.33.0.0/16",))
    return PolicyNode(nid, f"n{nid}", f"host{nid}", v4, v6, None, tags=("tag:exit",),
                      advertised_routes=("0.0.0.0/0", "::/0"))


def answers(compiled, nodes: list[PolicyNode]) -> dict[int, tuple]:  # type: ignore[no-untyped-def]
    out = {}
    for node in nodes:
        peers = compiled.visible_peers(node.id)
        out[node.id] = (compiled.packet_filter(node.id), sorted(peers), compiled.capmap(node.id),
                        compiled.ssh_policy(node.id),
                        {p: compiled.peer_allowed_ips(node.id, p) for p in sorted(peers)},
                        {p: compiled.primary_routes(p) for p in sorted(peers)})
    return out


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_of_joins_and_changes_matches_a_full_compile(name: str, seed: int) -> None:
    rng = random.Random(seed)
    policy = parse_policy("{" + TAGS + "," + POLICIES[name] + "}")
    nodes = [make_node(nid, rng) for nid in range(1, 13)]
    compiled = compile_policy(policy, USERS, nodes)
    for step in range(4):
        answers(compiled, nodes)  # warm every cache
        batch = [make_node(len(nodes) + i + 1, rng) for i in range(rng.randint(1, 4))]
        for changed in rng.sample(nodes, 2):  # existing nodes retagged, moved to another user, re-routed
            batch.append(make_node(changed.id, rng))
        compiled = compiled.with_nodes_changed(batch)
        by_id = {n.id: n for n in nodes} | {n.id: n for n in batch}
        nodes = list(by_id.values())
        full = compile_policy(policy, USERS, nodes)
        assert answers(compiled, nodes) == answers(full, nodes), f"step {step}"


def test_unreached_nodes_keep_the_same_objects_after_a_join() -> None:
    """The mapper relies on identity: a join into one user's rule leaves other users' answers alone."""
    policy = parse_policy("{" + TAGS + "," + POLICIES["per-user-and-servers"] + "}")
    nodes = [PolicyNode(1, "n1", "a", "100.64.0.1", "fd7a:115c:a1e0::1", 1),
             PolicyNode(2, "n2", "b", "100.64.0.2", "fd7a:115c:a1e0::2", 2),
             PolicyNode(3, "n3", "c", "100.64.0.3", "fd7a:115c:a1e0::3", 2)]
    compiled = compile_policy(policy, USERS, nodes)
    thor_filter, thor_peers = compiled.packet_filter(2), compiled.visible_peers(2)
    odin_peers = compiled.visible_peers(1)
    joined = compiled.with_nodes_changed([PolicyNode(4, "n4", "d", "100.64.0.4", "fd7a:115c:a1e0::4", 1)])
    assert joined.packet_filter(2) is thor_filter
    assert joined.visible_peers(2) is thor_peers
    assert joined.visible_peers(1) is not odin_peers and 4 in joined.visible_peers(1)


def test_a_resolver_copy_keeps_the_resolutions_a_change_cannot_reach() -> None:
    """A join costs work in proportion to what it touches: aliases of other users, other tags,
    groups without the node's user and prefixes keep their (identical) resolutions; the node's
    user's and tag's aliases, and those over every node, are resolved anew."""
    policy = parse_policy("{" + TAGS + "," + POLICIES["per-user-and-servers"] + "}")
    nodes = [PolicyNode(1, "n1", "a", "100.64.0.1", "fd7a:115c:a1e0::1", 1),
             PolicyNode(2, "n2", "b", "100.64.0.2", "fd7a:115c:a1e0::2", 2),
             PolicyNode(3, "n3", "c", "100.64.0.3", "fd7a:115c:a1e0::3", None, tags=("tag:server",))]
    resolver = compile_policy(policy, USERS, nodes).resolver
    aliases = ["odin@example.com", "thor@example.org", "tag:server", "tag:router", "group:eng", "*",
               "autogroup:member", "autogroup:tagged", "autogroup:internet", "10.0.0.0/8"]
    before = {alias: resolver.resolve(alias) for alias in aliases}
    # thor's node becomes a router: thor's and tag:router's members change
    moved = resolver.with_nodes([PolicyNode(2, "n2", "b", "100.64.0.2", "fd7a:115c:a1e0::2", None,
                                            tags=("tag:router",))])
    kept = {alias for alias in aliases if moved.resolve(alias) is before[alias]}
    assert kept == {"odin@example.com", "tag:server", "group:eng", "autogroup:internet", "10.0.0.0/8"}
    assert moved.resolve("thor@example.org").nodes == frozenset()
    assert moved.resolve("tag:router").nodes == {2}
    assert moved.resolve("autogroup:member").nodes == {1}
    assert resolver.resolve("thor@example.org").nodes == {2}, "the original resolver is untouched"
    assert resolver.user_nodes(2) == {2} and moved.user_nodes(2) == frozenset()


def test_filters_share_what_every_node_of_a_rule_receives() -> None:
    """Memory: a rule's sources and a port range are one object in every filter that holds them
    (a sparse tailnet of 5,000 nodes kept a copy per node: 13 MB of filters, now 6 MB)."""
    policy = parse_policy("{" + TAGS + "," + POLICIES["per-user-and-servers"] + "}")
    nodes = [PolicyNode(1, "n1", "a", "100.64.0.1", "fd7a:115c:a1e0::1", 1),
             PolicyNode(2, "n2", "b", "100.64.0.2", "fd7a:115c:a1e0::2", 1)]
    compiled = compile_policy(policy, USERS, nodes)
    first, second = compiled.packet_filter(1)[0], compiled.packet_filter(2)[0]
    assert first["SrcIPs"] == ["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"]
    assert first["SrcIPs"] is second["SrcIPs"]
    assert first["DstPorts"][0]["Ports"] is second["DstPorts"][0]["Ports"]
    assert first["DstPorts"][0]["IP"] != second["DstPorts"][0]["IP"]
