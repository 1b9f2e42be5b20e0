"""Checks on single policy values (aliases, tag names, groups, capability names).

The messages are the ones Tailscale's service answers with, so a policy rejected here reads
the same as it would there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .ipset import parse_network
from .model import PolicyError

AUTOGROUPS = frozenset({
    "autogroup:member", "autogroup:tagged", "autogroup:self", "autogroup:internet",
    "autogroup:danger-all", "autogroup:admin", "autogroup:owner", "autogroup:nonroot",
    "autogroup:shared", "autogroup:it-admin", "autogroup:network-admin", "autogroup:billing-admin",
    "autogroup:auditor",
})


class AliasContext(Protocol):
    @property
    def groups(self) -> dict[str, list[str]]: ...
    @property
    def tag_owners(self) -> dict[str, list[str]]: ...
    @property
    def hosts(self) -> dict[str, str]: ...
    @property
    def tailnet_domains(self) -> frozenset[str] | None: ...


def check_tag_name(tag: str) -> None:
    name = tag.removeprefix("tag:")
    if not tag.startswith("tag:") or not name:
        raise PolicyError(f'tagOwners["{tag}"]: tag names must start with \'tag:\'')
    if not (name[0].isascii() and name[0].isalpha()):
        raise PolicyError(f"tagOwners[\"{tag}\"]: tag names must start with a letter, after 'tag:'")


def check_groups(groups: Mapping[str, Sequence[str]]) -> None:
    # Tailscale reports the last nested group in name order (group:b in a<->b cycle).
    nested = [(name, member) for name in sorted(groups) for member in groups[name]
              if isinstance(member, str) and member.startswith("group:")]
    if nested:
        name, member = nested[-1]
        raise PolicyError(f'groups["{name}"]: "{member}": group members cannot be recursive',
                          location=f'groups["{name}"]')


def check_alias(alias: str, field: str, ctx: AliasContext) -> None:
    """Reject aliases that name nothing the policy defines (tags, groups, hosts)."""
    if alias.startswith("tag:"):
        if alias not in ctx.tag_owners:
            raise PolicyError(f'{field}=tag not found: "{alias}"')
    elif alias.startswith("group:"):
        if alias not in ctx.groups:
            raise PolicyError(f'{field}=group not found: "{alias}"')
    elif alias.startswith("autogroup:"):
        if alias not in AUTOGROUPS:
            raise PolicyError(f'{field}="{alias}": unknown autogroup')
    elif alias == "*" or "@" in alias or alias in ctx.hosts:
        return
    else:
        try:
            parse_network(alias)
        except ValueError:
            raise PolicyError(f'{field}="{alias}": not a user, group, tag, host or IP') from None


def check_ip_dst_for_app(dst: str) -> None:
    if dst in ("0.0.0.0/0", "::/0"):
        raise PolicyError(f'dst "{dst}": to allow all IP addresses, use "*" or "autogroup:internet"')


# tailscale.com capabilities a policy may grant; the others (drive-sharer, relay-target,
# ingress, funnel...) are the service's own.
GRANTABLE_TAILSCALE_CAPS = frozenset({
    "tailscale.com/cap/drive", "tailscale.com/cap/relay", "tailscale.com/cap/webui",
    "tailscale.com/cap/kubernetes", "tailscale.com/cap/tsidp", "tailscale.com/cap/secrets",
})


def check_app(app: Mapping[str, Any], dsts: Sequence[str], where: str) -> None:
    """A grant's `app` capabilities; `where` is its location (`grants[0].app`)."""
    if "autogroup:internet" in dsts:
        raise PolicyError("cannot use app grants with autogroup:internet", location=where)
    for name in app:
        domain, slash, path = name.partition("/")
        if "://" in name or not slash or not domain or not path:
            raise PolicyError("capability name must have the form {domain}/{path}", location=f'{where}["{name}"]')
        if domain == "tailscale.com" and name not in GRANTABLE_TAILSCALE_CAPS:
            raise PolicyError("capability name must not be in the tailscale.com domain",
                              location=f'{where}["{name}"]')


def check_host(value: Any) -> None:
    """A `hosts` entry names one address or prefix."""
    if not isinstance(value, str):
        raise PolicyError(f"must be an IP address or prefix as a string, not {value!r}")
    try:
        parse_network(value)
    except ValueError:
        raise PolicyError(f'"{value}" is not an IP address or prefix') from None


def check_route_prefix(prefix: str) -> None:
    """An `autoApprovers.routes` key is the prefix (or the prefixes inside it) to approve."""
    try:
        parse_network(prefix)
    except ValueError:
        raise PolicyError(f'"{prefix}" is not an IP prefix') from None


# Addresses Tailscale keeps for itself inside CGNAT: MagicDNS/TSMP and the Quad100 service range.
RESERVED_POOLS = (parse_network("100.100.100.0/24"), parse_network("100.115.92.0/23"))
CGNAT_POOL = parse_network("100.64.0.0/10")


def check_ip_pool(pool: str, index: int) -> None:
    try:
        net = parse_network(pool)
    except ValueError:
        raise PolicyError(f'nodeAttrs[{index}].ipPool: "{pool}" is not an IP prefix') from None
    if net.version != 4 or not net.subnet_of(CGNAT_POOL):  # type: ignore[arg-type]
        raise PolicyError(f'nodeAttrs[{index}].ipPool: "{pool}" is outside 100.64.0.0/10, the tailnet range')
    if any(net.overlaps(reserved) for reserved in RESERVED_POOLS):  # type: ignore[arg-type]
        raise PolicyError(f"IPPool({pool}): network within reserved range")
