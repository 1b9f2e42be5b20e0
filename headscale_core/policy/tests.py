"""The policy's own `tests` and `sshTests`."""

from __future__ import annotations

from collections.abc import Sequence

from .model import PolicyNode, PolicyUser
from .parse import Policy


def run_policy_tests(policy: Policy, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> list[str]:
    return []
