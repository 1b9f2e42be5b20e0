"""Unit tests of the policy engine: parse errors, autogroups, ports/protocols, explain."""

from __future__ import annotations

import pytest

from headscale_core.policy import PolicyError, PolicyNode, PolicyUser, compile_policy, parse_policy
from headscale_core.policy.tests import run_policy_tests

USERS = [PolicyUser(1, "odin", "odin@example.com"), PolicyUser(2, "thor", "thor@example.org")]
NODES = [
    PolicyNode(1, "n1", "laptop", "100.64.0.1", "fd7a:115c:a1e0::1", 1),
    PolicyNode(2, "n2", "phone", "100.64.0.2", "fd7a:115c:a1e0::2", 1),
    PolicyNode(3, "n3", "desk", "100.64.0.3", "fd7a:115c:a1e0::3", 2),
    PolicyNode(4, "n4", "server", "100.64.0.4", "fd7a:115c:a1e0::4", None, tags=("tag:server",)),
    PolicyNode(5, "n5", "router", "100.64.0.5", "fd7a:115c:a1e0::5", None, tags=("tag:router",),
               advertised_routes=("10.33.0.0/16",), approved_routes=("10.33.0.0/16",)),
]
TAGS = '"tagOwners": {"tag:server": ["odin@example.com"], "tag:router": ["odin@example.com"]}'


def compile_text(body: str):  # type: ignore[no-untyped-def]
    return compile_policy(parse_policy("{" + TAGS + "," + body + "}"), USERS, NODES)


@pytest.mark.parametrize(("body", "message"), [
    ('"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]', 'action="deny" is not supported'),
    ('"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]', 'src=tag not found: "tag:nope"'),
    ('"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:server:ssh"]}]',
     'dst="tag:server:ssh": port range "ssh": invalid first integer'),
    ('"grants": [{"src": ["*"], "dst": ["tag:server"], "ip": ["tcp:0"]}]',
     "port range \"0\": first port must be >0, or use '*' for wildcard"),
    ('"grants": [{"src": ["*"], "dst": ["*"], "ip": []}]', "ip and app can not both be empty"),
    ('"ssh": [{"action": "accept", "src": ["*"], "dst": ["tag:server"], "users": ["root"], "checkPeriod": "200h"}]',
     "checkPeriod 200h0m0s is above the max (168h)"),
    ('"groups": {"group:a": ["group:b"], "group:b": []}', 'groups["group:a"]: "group:b": group members cannot be recursive'),
])
def test_parse_errors_name_the_field_at_fault(body: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy("{" + TAGS + "," + body + "}")
    assert err.value.message == message


def test_hujson_comments_and_trailing_commas_are_accepted() -> None:
    policy = parse_policy('{\n // who may reach what\n "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"],},],\n}')
    assert len(policy.rules) == 1


def test_autogroup_self_reaches_only_the_same_users_devices() -> None:
    compiled = compile_text('"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]')
    assert compiled.visible_peers(1) == {2}
    assert compiled.visible_peers(3) == frozenset()
    assert compiled.packet_filter(4) == []
    assert sorted(compiled.packet_filter(1)[0]["SrcIPs"]) == sorted(
        ["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"])


def test_autogroup_tagged_and_member_split_the_tailnet() -> None:
    compiled = compile_text('"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:22"]}]')
    assert compiled.visible_peers(4) == {1, 2, 3}
    assert compiled.visible_peers(1) == {4, 5}


def test_ports_and_protocol_reach_the_filter() -> None:
    compiled = compile_text(
        '"acls": [{"action": "accept", "src": ["thor@example.org"], "dst": ["tag:server:80,443,8000-8080"], "proto": "tcp"}]')
    [rule] = compiled.packet_filter(4)
    assert rule["IPProto"] == [6]
    ports = {(d["Ports"]["First"], d["Ports"]["Last"]) for d in rule["DstPorts"]}
    assert ports == {(80, 80), (443, 443), (8000, 8080)}


def test_subnet_route_destination_goes_to_the_router() -> None:
    compiled = compile_text('"acls": [{"action": "accept", "src": ["odin@example.com"], "dst": ["10.33.1.0/24:22"]}]')
    assert compiled.packet_filter(5)[0]["DstPorts"][0]["IP"] == "10.33.1.0/24"
    assert "10.33.0.0/16" in compiled.peer_allowed_ips(1, 5)
    assert "10.33.0.0/16" not in compiled.peer_allowed_ips(3, 5)


def test_explain_names_the_deciding_rule() -> None:
    compiled = compile_text('"acls": ['
                            '{"action": "accept", "src": ["thor@example.org"], "dst": ["tag:server:22"]},'
                            '{"action": "accept", "src": ["odin@example.com"], "dst": ["tag:server:*"]}]')
    verdict = compiled.explain(3, 4, 22)
    assert verdict.allowed and verdict.rule_index == 0 and verdict.rule_kind == "acls"
    assert compiled.explain(3, 4, 80).allowed is False
    assert compiled.explain(1, 4, 80).rule_index == 1


def test_policy_tests_report_failures() -> None:
    policy = parse_policy("{" + TAGS + ', "acls": [{"action": "accept", "src": ["thor@example.org"], '
                          '"dst": ["tag:server:22"]}], "tests": [{"src": "thor@example.org", '
                          '"accept": ["tag:server:22"], "deny": ["tag:server:80", "tag:server:22"]}]}')
    failures = run_policy_tests(policy, USERS, NODES)
    assert len(failures) == 1 and "tag:server:22" in failures[0]


def test_no_policy_allows_everything() -> None:
    compiled = compile_policy(None, USERS, NODES)
    assert compiled.packet_filter(1)[0]["SrcIPs"] == ["*"]
    assert compiled.visible_peers(1) == {2, 3, 4, 5}


def test_with_node_changed_recomputes_tags() -> None:
    compiled = compile_text('"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server:22"]}]')
    retagged = PolicyNode(3, "n3", "desk", "100.64.0.3", "fd7a:115c:a1e0::3", None, tags=("tag:server",))
    changed = compiled.with_node_changed(retagged)
    assert changed.packet_filter(3) != []
    assert compiled.packet_filter(3) == []


def test_capmap_collects_node_attrs_for_the_nodes_they_target() -> None:
    compiled = compile_text('"nodeAttrs": ['
                            '{"target": ["tag:server"], "attr": ["funnel"]},'
                            '{"target": ["odin@example.com"], "attr": ["disable-ipv4"],'
                            ' "app": {"example.com/cap/x": [{"a": 1}]}},'
                            '{"target": ["*"], "app": {"example.com/cap/x": [{"b": 2}]}}]')
    assert "funnel" in compiled.capmap(4)
    assert "https://tailscale.com/cap/warn-funnel-no-https" in compiled.capmap(4)
    assert compiled.capmap(1)["example.com/cap/x"] == [{"a": 1}, {"b": 2}]
    assert "disable-ipv4" not in compiled.capmap(3)
    # disable-ipv4 hides IPv4 both ways.
    assert compiled.peer_allowed_ips(3, 1) == ["fd7a:115c:a1e0::1/128"]
    assert compiled.peer_allowed_ips(1, 3) == ["fd7a:115c:a1e0::3/128"]


def test_check_rules_come_before_accept_rules() -> None:
    compiled = compile_text('"ssh": ['
                            '{"action": "accept", "src": ["odin@example.com"], "dst": ["tag:server"], "users": ["root"]},'
                            '{"action": "check", "src": ["odin@example.com"], "dst": ["tag:server"], "users": ["root"]}]')
    policy = compiled.ssh_policy(4)
    assert policy is not None
    assert ["holdAndDelegate" in r["action"] for r in policy["rules"]] == [True, False]


def test_via_grant_steers_the_subnet_through_the_tagged_router() -> None:
    nodes = [*NODES, PolicyNode(6, "n6", "router2", "100.64.0.6", "fd7a:115c:a1e0::6", None, tags=("tag:server",),
                                advertised_routes=("10.33.0.0/16",), approved_routes=("10.33.0.0/16",))]
    policy = parse_policy("{" + TAGS + ', "grants": [{"src": ["odin@example.com"], "dst": ["10.33.0.0/16"], '
                          '"ip": ["*"], "via": ["tag:server"]}]}')
    compiled = compile_policy(policy, USERS, nodes)
    assert "10.33.0.0/16" in compiled.peer_allowed_ips(1, 6)  # the via router, though not primary
    assert "10.33.0.0/16" not in compiled.peer_allowed_ips(1, 5)
    assert compiled.packet_filter(5) == []
    assert compiled.packet_filter(6)[0]["DstPorts"][0]["IP"] == "10.33.0.0/16"


@pytest.mark.parametrize("changed", [
    PolicyNode(3, "n3", "desk", "100.64.0.3", "fd7a:115c:a1e0::3", None, tags=("tag:server",)),
    PolicyNode(2, "n2", "phone", "100.64.0.2", "fd7a:115c:a1e0::2", 2),
    PolicyNode(4, "n4", "server", "100.64.0.44", "fd7a:115c:a1e0::44", None, tags=("tag:server",)),
    PolicyNode(4, "n4", "server", "100.64.0.4", "fd7a:115c:a1e0::4", None, tags=("tag:server",),
               advertised_routes=("10.44.0.0/16",), approved_routes=("10.44.0.0/16",)),
    PolicyNode(7, "n7", "new", "100.64.0.7", "fd7a:115c:a1e0::7", 1),
])
def test_incremental_recompute_matches_a_full_compile(changed: PolicyNode) -> None:
    body = ('"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},'
            '{"action": "accept", "src": ["odin@example.com"], "dst": ["tag:server:22", "10.0.0.0/8:*"]},'
            '{"action": "accept", "src": ["tag:router"], "dst": ["thor@example.org:80"]}]')
    compiled = compile_text(body)
    for node in NODES:
        compiled.packet_filter(node.id), compiled.visible_peers(node.id)
    incremental = compiled.with_node_changed(changed)
    nodes = [changed if n.id == changed.id else n for n in NODES]
    if changed.id not in {n.id for n in NODES}:
        nodes.append(changed)
    full = compile_policy(parse_policy("{" + TAGS + "," + body + "}"), USERS, nodes)
    for node in nodes:
        assert incremental.packet_filter(node.id) == full.packet_filter(node.id)
        assert incremental.visible_peers(node.id) == full.visible_peers(node.id)
        for peer in full.visible_peers(node.id):
            assert incremental.peer_allowed_ips(node.id, peer) == full.peer_allowed_ips(node.id, peer)


def test_incremental_recompute_keeps_answers_the_change_cannot_reach() -> None:
    compiled = compile_text('"acls": [{"action": "accept", "src": ["thor@example.org"], "dst": ["tag:server:22"]},'
                            '{"action": "accept", "src": ["odin@example.com"], "dst": ["tag:router:80"]}]')
    server_filter = compiled.packet_filter(4)
    thor_peers = compiled.visible_peers(3)
    # The router (tag:router) advertises another subnet: no rule names a subnet, so only the
    # router's own answers are recomputed.
    router = PolicyNode(5, "n5", "router", "100.64.0.5", "fd7a:115c:a1e0::5", None, tags=("tag:router",),
                        advertised_routes=("10.55.0.0/16",), approved_routes=("10.55.0.0/16",))
    changed = compiled.with_node_changed(router)
    assert changed.packet_filter(4) is server_filter
    assert changed.visible_peers(3) is thor_peers
