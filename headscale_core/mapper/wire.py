"""tailcfg JSON for nodes, DNS and user profiles (control protocol §8, §9).

Exact Go field names; zero values omitted rather than sent as ``""`` (a key field sent as
``""`` makes the client reject the whole message).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from headscale_core.state.model import TAGGED_DEVICES_USER_ID, TAGGED_DEVICES_USER_NAME, Node, User

if TYPE_CHECKING:
    from headscale_core.config import Config
    from headscale_core.state.service import StateService

ZERO_TIME = "0001-01-01T00:00:00Z"
SELF_CAPS = {
    "https://tailscale.com/cap/is-admin": [],
    "https://tailscale.com/cap/ssh": [],
    "default-auto-update": [False],
}


def go_time(when: datetime | None) -> str:
    if when is None:
        return ZERO_TIME
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def node_json(state: StateService, node: Node, viewer_id: int | None) -> dict[str, Any]:
    """``tailcfg.Node`` for ``node`` as seen by ``viewer_id`` (None: the node itself)."""
    policy = state.policy
    base = state.config.dns.base_domain
    online = node.id in state.store.online
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": str(node.id),
        "Name": f"{node.given_name}.{base}." if base else f"{node.given_name}.",
        "User": node.user_id if node.user_id is not None else TAGGED_DEVICES_USER_ID,
        "Key": node.node_key,
        "KeyExpiry": go_time(node.expiry),
        "Machine": node.machine_key,
        "Addresses": node.addresses,
        "Hostinfo": node.host_info or {},
        "Created": go_time(node.created_at),
        "MachineAuthorized": True,
        "Online": online,
    }
    if node.disco_key:
        out["DiscoKey"] = node.disco_key
    if node.endpoints:
        out["Endpoints"] = list(node.endpoints)
    if node.home_derp:
        out["HomeDERP"] = node.home_derp
    if node.capver:
        out["Cap"] = node.capver
    if node.tags:
        out["Tags"] = list(node.tags)
    if not online and node.last_seen is not None:
        out["LastSeen"] = go_time(node.last_seen)
    if viewer_id is None:
        routes = policy.routes_in_use(node)
        out["AllowedIPs"] = node.addresses + routes
        primaries = policy.primary_routes(node)
        if primaries:
            out["PrimaryRoutes"] = primaries
        capmap: dict[str, Any] = dict(SELF_CAPS)
        if state.config.taildrop.enabled:
            capmap["https://tailscale.com/cap/file-sharing"] = []
        compiled = policy.compiled()
        if compiled is not None and hasattr(compiled, "capmap"):
            capmap.update(compiled.capmap(node.id))
        out["CapMap"] = capmap
    else:
        out["AllowedIPs"] = policy.peer_allowed_ips(viewer_id, node)
        primaries = policy.primary_routes(node)
        if primaries:
            out["PrimaryRoutes"] = primaries
    if node.expiry is not None and node.expiry <= datetime.now(UTC):
        out["Expired"] = True
    return out


def peer_change(state: StateService, node: Node, fields: set[str] | frozenset[str]) -> dict[str, Any]:
    """A ``PeerChange`` patch carrying the current values of ``fields``."""
    out: dict[str, Any] = {"NodeID": node.id}
    if "Endpoints" in fields:
        out["Endpoints"] = list(node.endpoints)
    if "DERPRegion" in fields:
        out["DERPRegion"] = node.home_derp
    if "DiscoKey" in fields and node.disco_key:
        out["DiscoKey"] = node.disco_key
    if "Key" in fields:
        out["Key"] = node.node_key
    if "Online" in fields:
        out["Online"] = node.id in state.store.online
    if "LastSeen" in fields and node.last_seen is not None:
        out["LastSeen"] = go_time(node.last_seen)
    if "KeyExpiry" in fields:
        out["KeyExpiry"] = go_time(node.expiry)
    return out


def user_profile(user: User | None) -> dict[str, Any]:
    if user is None:
        return {"ID": TAGGED_DEVICES_USER_ID, "LoginName": TAGGED_DEVICES_USER_NAME,
                "DisplayName": TAGGED_DEVICES_USER_NAME}
    profile = {"ID": user.id, "LoginName": user.login_name, "DisplayName": user.display_name or user.name}
    if user.profile_pic_url:
        profile["ProfilePicURL"] = user.profile_pic_url
    return profile


def dns_config(config: Config) -> dict[str, Any]:
    dns = config.dns
    out: dict[str, Any] = {}
    if dns.magic_dns:
        out["Proxied"] = True
    domains = ([dns.base_domain] if dns.base_domain and dns.magic_dns else []) + list(dns.search_domains)
    if domains:
        out["Domains"] = domains
    resolvers = [{"Addr": addr} for addr in dns.nameservers.global_]
    if resolvers:
        out["Resolvers" if dns.override_local_dns else "FallbackResolvers"] = resolvers
    if dns.nameservers.split:
        out["Routes"] = {domain: [{"Addr": a} for a in addrs] for domain, addrs in dns.nameservers.split.items()}
    if dns.extra_records:
        out["ExtraRecords"] = [{"Name": r.get("name", ""), "Type": r.get("type", ""), "Value": r.get("value", "")}
                               for r in dns.extra_records]
    return out
