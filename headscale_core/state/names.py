"""MagicDNS names: a node's given name is a DNS label derived from its hostname, unique in
the tailnet."""

from __future__ import annotations

import re
from collections.abc import Container

_INVALID = re.compile(r"[^a-z0-9-]+")


def dns_label(hostname: str) -> str:
    """Lower-case, invalid characters to '-', at most 63 characters, never empty."""
    label = _INVALID.sub("-", hostname.lower().split(".")[0]).strip("-")[:63].strip("-")
    return label or "node"


def validate_given_name(name: str) -> str | None:
    """Why ``name`` cannot be a node name, or None."""
    if not name or len(name) > 63:
        return "a node name must be 1 to 63 characters"
    if dns_label(name) != name:
        return f"{name!r} is not a DNS label: use lower-case letters, digits and '-' (e.g. {dns_label(name)!r})"
    return None


def unique_label(hostname: str, taken: Container[str]) -> str:
    base = dns_label(hostname)
    if base not in taken:
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        candidate = base[: 63 - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1
