"""`sshTests`: which local users a source may (or may not) log in as on each destination."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .ssh import ssh_sources

if TYPE_CHECKING:
    from .compiled import CompiledPolicy


def run_ssh_tests(compiled: CompiledPolicy, tests: Sequence[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    r = compiled.resolver
    policy = compiled.policy
    if policy is None:
        return out
    for index, test in enumerate(tests):
        src_nodes = r.resolve(test.get("src") or "").nodes
        dst_nodes: set[int] = set()
        for dst in test.get("dst") or []:
            dst_nodes |= r.matching_nodes(r.resolve(dst), as_source=True)
        if not src_nodes or not dst_nodes:
            out.append(f"sshTests[{index}]: src or dst matches no device")
            continue
        for expect in ("accept", "check", "deny"):
            for user in test.get(expect) or []:
                if not user:
                    out.append(f"sshTests[{index}]: empty user in {expect}")
                    continue
                for dst in dst_nodes:
                    for src in src_nodes:
                        got = _verdict(compiled, src, dst, user)
                        if got != expect:
                            out.append(f"sshTests[{index}]: {user} from node {src} to node {dst} is {got}, "
                                       f"the test expects {expect}")
    return out


def _verdict(compiled: CompiledPolicy, src: int, dst: int, user: str) -> str:
    """accept / check / deny for one login, first matching rule wins."""
    policy = compiled.policy
    assert policy is not None
    r = compiled.resolver
    # The node sees check rules ahead of accept rules (see ssh.py), so a check that matches wins.
    for rule in sorted(policy.ssh, key=lambda rule: rule.action != "check"):
        if src not in ssh_sources(dst, rule, r):
            continue
        if _user_matches(rule.users, user, r.nodes[src].user_id, compiled):
            return rule.action
    return "deny"


def _user_matches(users: tuple[str, ...], login: str, src_user_id: int | None, compiled: CompiledPolicy) -> bool:
    if login in users:
        return True
    if login != "root" and "autogroup:nonroot" in users:
        return True
    src_user = compiled.resolver.users.get(src_user_id) if src_user_id is not None else None
    for u in users:
        if u.startswith("localpart:*@") and src_user is not None:
            domain = u.partition("@")[2].lower()
            if src_user.email.lower() == f"{login}@{domain}".lower():
                return True
    return False
