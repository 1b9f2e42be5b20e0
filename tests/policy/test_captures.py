"""Every Tailscale policy capture, replayed through the engine and compared per node."""

from __future__ import annotations

from pathlib import Path

import pytest

from headscale_core.policy import PolicyError, compile_policy, parse_policy
from headscale_core.policy.tests import run_policy_tests

from .captures import (
    CAPTURES_DIR,
    SERVICE_CAPS,
    capture_files,
    captured_capmap,
    captured_peers,
    load_capture,
    normalise_filter,
    normalise_ssh,
)

FILES = capture_files()
pytestmark = pytest.mark.skipif(not FILES, reason=f"no policy captures in {CAPTURES_DIR}")

# Captures we believe do not show the service's settled answer. Strict: if one starts to
# pass, the mark must go.
DISPUTED = {
    "acl-k03.hujson": "tag:client/tag:prod/tag:exit nodes are sources of the same *:* rule as tag:server, "
                      "yet only tag:server sees the auto-approved 10.33.0.0/16 route: the netmaps look "
                      "taken at different moments around the route's auto-approval",
    "policytest-allpass-grants-only-tag-src-ipv6-literal-dst.hujson":
        "the service's own test says tag:client reaches [fd7a:115c:a1e0::10]:22, yet every node's "
        "filter is empty and no node has peers: netmaps captured before the policy took effect",
    "ssh-e1.hujson": "the service names 'PASSKEY' instead of the policy's domain in its message; nothing "
                     "in the policy or topology explains that text (we reject it, with the domain)",
}


def _param(path: Path) -> object:
    reason = DISPUTED.get(path.name)
    marks = [pytest.mark.xfail(strict=True, reason=f"disputed capture: {reason}")] if reason else []
    return pytest.param(path, id=path.name, marks=marks)


@pytest.mark.parametrize("capture_path", [_param(p) for p in FILES])
def test_capture(capture_path: Path) -> None:
    capture = load_capture(capture_path)
    users, nodes = capture.users, list(capture.nodes.values())
    expected_error = capture.rejected_with
    try:
        policy = parse_policy(capture.policy_text, tailnet_domains=capture.tailnet_domains)
        failures = run_policy_tests(policy, users, nodes)
        if failures:
            raise PolicyError("test(s) failed")
    except PolicyError as exc:
        assert exc.message == expected_error, f"rejected, but the service accepted it or said {expected_error!r}"
        return
    assert expected_error is None, f"accepted, but the service rejected it with {expected_error!r}"

    compiled = compile_policy(policy, users, nodes)
    name_of = {n.id: name for name, n in capture.nodes.items()}
    problems = []
    for name, node_capture in capture.node_captures.items():
        node = capture.nodes[name]
        netmap = node_capture.get("netmap") or {}
        if "packet_filter_rules" in node_capture:
            want = normalise_filter(node_capture["packet_filter_rules"])
            got = normalise_filter(compiled.packet_filter(node.id))
            if want != got:
                problems.append(f"{name}: packet filter\n  want {want}\n  got  {got}")
        if netmap:
            want_peers = captured_peers(netmap)
            got_peers = {name_of[p]: sorted(compiled.peer_allowed_ips(node.id, p))
                         for p in compiled.visible_peers(node.id)}
            if want_peers != got_peers:
                problems.append(f"{name}: peers\n  want {want_peers}\n  got  {got_peers}")
            want_caps = captured_capmap(netmap)
            if want_caps is not None:
                got_caps = {k: v for k, v in compiled.capmap(node.id).items() if k not in SERVICE_CAPS}
                if want_caps != got_caps:
                    problems.append(f"{name}: CapMap\n  want {want_caps}\n  got  {got_caps}")
            if "SSHPolicy" in netmap:
                want_ssh = normalise_ssh(netmap.get("SSHPolicy"))
                got_ssh = normalise_ssh(compiled.ssh_policy(node.id))
                if want_ssh != got_ssh:
                    problems.append(f"{name}: ssh policy\n  want {want_ssh}\n  got  {got_ssh}")
    assert not problems, "\n".join(problems)
