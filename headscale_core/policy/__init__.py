"""Tailnet policy engine: HuJSON policy -> per-node packet filters, peers and SSH policy."""

from .compiled import CompiledPolicy, compile_policy
from .model import Explanation, PolicyError, PolicyNode, PolicyUser
from .parse import Policy, parse_policy

__all__ = [
    "CompiledPolicy", "Explanation", "Policy", "PolicyError", "PolicyNode", "PolicyUser",
    "compile_policy", "parse_policy",
]
