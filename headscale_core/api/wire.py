"""Wire shapes of ``/api/v1``: Headscale 0.29.2's grpc-gateway JSON, out and in.

Out: lowerCamelCase, uint64 IDs as strings, RFC 3339 ``Z`` timestamps, ``null`` for unset
messages, every field present. In: IDs as strings or numbers, camelCase or snake_case keys,
unknown keys ignored. Every input problem is an ``InvalidRequest`` naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from headscale_core.errors import InvalidRequest
from headscale_core.state.model import (
    TAGGED_DEVICES_USER_ID,
    TAGGED_DEVICES_USER_NAME,
    APIKey,
    Node,
    PreAuthKey,
    User,
)

REGISTER_METHODS = {
    "authkey": "REGISTER_METHOD_AUTH_KEY",
    "cli": "REGISTER_METHOD_CLI",
    "oidc": "REGISTER_METHOD_OIDC",
}

TAGGED_DEVICES_USER: dict[str, Any] = {
    "id": str(TAGGED_DEVICES_USER_ID),
    "name": TAGGED_DEVICES_USER_NAME,
    "createdAt": None,
    "displayName": "Tagged Devices",
    "email": "",
    "providerId": "",
    "provider": "",
    "profilePicUrl": "",
}

_FRACTION = re.compile(r"(\.\d+)")


def timestamp(when: datetime | None) -> str | None:
    """``google.protobuf.Timestamp`` JSON: UTC with ``Z`` and 0, 3 or 6 fractional digits."""
    if when is None:
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    micro = when.microsecond
    if micro:
        text += f".{micro // 1000:03d}" if micro % 1000 == 0 else f".{micro:06d}"
    return text + "Z"


def masked(kind: str, prefix: str) -> str:
    """How listings show a key whose secret is gone: ``hskey-<kind>-<prefix>-***``."""
    return f"hskey-{kind}-{prefix}-***"


def user_json(user: User | None) -> dict[str, Any]:
    if user is None:
        return dict(TAGGED_DEVICES_USER)
    return {
        "id": str(user.id),
        "name": user.name,
        "createdAt": timestamp(user.created_at),
        "displayName": user.display_name,
        "email": user.email,
        "providerId": user.provider_identifier or "",
        "provider": user.provider,
        "profilePicUrl": user.profile_pic_url,
    }


def preauth_key_json(key: PreAuthKey, user: User | None, full_key: str | None = None) -> dict[str, Any]:
    """A pre-auth key; the secret only on creation (``full_key``). Tag-only keys have ``user: null``."""
    return {
        "user": user_json(user) if key.user_id is not None and user is not None else None,
        "id": str(key.id),
        "key": full_key or masked("auth", key.prefix),
        "reusable": key.reusable,
        "ephemeral": key.ephemeral,
        "used": key.used,
        "expiration": timestamp(key.expiration),
        "createdAt": timestamp(key.created_at),
        "aclTags": list(key.tags),
    }


def api_key_json(key: APIKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "prefix": masked("api", key.prefix),
        "expiration": timestamp(key.expiration),
        "createdAt": timestamp(key.created_at),
        "lastSeen": timestamp(key.last_seen),
        "scope": key.scope,
    }


def node_json(node: Node, *, user: User | None, online: bool, subnet_routes: Iterable[str],
              preauth_key: dict[str, Any] | None) -> dict[str, Any]:
    """A node. Tagged nodes are owned by the synthetic tagged-devices user, as in Headscale."""
    return {
        "id": str(node.id),
        "machineKey": node.machine_key,
        "nodeKey": node.node_key,
        "discoKey": node.disco_key,
        "ipAddresses": [ip for ip in (node.ipv4, node.ipv6) if ip],
        "name": node.hostname,
        "user": user_json(None if node.is_tagged else user),
        "lastSeen": timestamp(node.last_seen),
        "expiry": timestamp(node.expiry),
        "preAuthKey": preauth_key,
        "createdAt": timestamp(node.created_at),
        "registerMethod": REGISTER_METHODS.get(node.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": node.given_name,
        "online": online,
        "approvedRoutes": list(node.approved_routes),
        "availableRoutes": list(node.announced_routes),
        "subnetRoutes": list(subnet_routes),
        "tags": list(node.tags),
    }


# ---- input ------------------------------------------------------------------------------


def field(body: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A request field by its camelCase name, or its snake_case spelling (protojson accepts both)."""
    if name in body:
        return body[name]
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
    return body.get(snake, default)


def parse_id(value: Any, what: str, *, optional: bool = False) -> int | None:
    """A uint64 ID sent as a string or a number; 0 or absent means unset (proto3 default)."""
    if value is None or value == "" or value == 0 or value == "0":
        if optional:
            return None
        raise InvalidRequest(f"{what} is required")
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise InvalidRequest(f"{what} must be a positive integer ID, not {value!r}")
    return int(value)


def parse_bool(value: Any, what: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise InvalidRequest(f"{what} must be true or false, not {value!r}")


def parse_time(value: Any, what: str) -> datetime | None:
    """An RFC 3339 timestamp; null, empty or Go's zero time mean unset."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be an RFC 3339 timestamp string, not {value!r}")
    if value.startswith("0001-01-01"):
        return None
    # Python parses at most microseconds; protobuf allows nanoseconds.
    text = _FRACTION.sub(lambda m: m.group(1)[:7], value.strip(), count=1)
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as exc:
        raise InvalidRequest(f"{what} {value!r} is not an RFC 3339 timestamp (like 2026-01-02T15:04:05Z)") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{what} must be a list of strings")
    return value


def parse_routes(value: Any) -> list[str]:
    routes = [r for r in parse_strings(value, "routes") if r]
    for route in routes:
        try:
            ipaddress.ip_network(route, strict=False)
        except ValueError as exc:
            raise InvalidRequest(f"route {route!r} is not a CIDR prefix (like 10.0.0.0/24)") from exc
    return routes


def key_prefix(text: str, kind: str) -> str:
    """The 12-character prefix of a full, masked (``…-***``) or bare key."""
    head = f"hskey-{kind}-"
    rest = text[len(head):] if text.startswith(head) else text
    return rest.split("-", 1)[0]
