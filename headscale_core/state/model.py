"""Domain objects: what a user, a node and a key are, independent of storage.

Frozen dataclasses; the state service replaces them (``dataclasses.replace``) on change, so
a snapshot handed to the mapper can never change under it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TAGGED_DEVICES_USER_ID = 2147455555
TAGGED_DEVICES_USER_NAME = "tagged-devices"


@dataclass(frozen=True)
class User:
    id: int
    name: str
    display_name: str = ""
    email: str = ""
    provider: str = ""
    provider_identifier: str | None = None
    profile_pic_url: str = ""
    groups: tuple[str, ...] = ()
    created_at: datetime | None = None

    @property
    def login_name(self) -> str:
        """The name the client shows and the policy matches (``alice@`` for local users)."""
        if self.email:
            return self.email
        return self.name if "@" in self.name else f"{self.name}@"


@dataclass(frozen=True)
class Node:
    id: int
    machine_key: str
    node_key: str
    given_name: str
    hostname: str = ""
    user_id: int | None = None
    disco_key: str = ""
    endpoints: tuple[str, ...] = ()
    host_info: dict[str, Any] = field(default_factory=dict, compare=False)
    ipv4: str | None = None
    ipv6: str | None = None
    register_method: str = ""
    tags: tuple[str, ...] = ()
    auth_key_id: int | None = None
    ephemeral: bool = False
    last_seen: datetime | None = None
    expiry: datetime | None = None
    approved_routes: tuple[str, ...] = ()
    capver: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_tagged(self) -> bool:
        return bool(self.tags)

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.ipv4:
            out.append(f"{self.ipv4}/32")
        if self.ipv6:
            out.append(f"{self.ipv6}/128")
        return out

    @property
    def announced_routes(self) -> tuple[str, ...]:
        return tuple(self.host_info.get("RoutableIPs") or ())

    @property
    def home_derp(self) -> int:
        return int((self.host_info.get("NetInfo") or {}).get("PreferredDERP") or 0)

    def is_expired(self, now: datetime) -> bool:
        return self.expiry is not None and self.expiry <= now

    def replace(self, **changes: Any) -> Node:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PreAuthKey:
    id: int
    prefix: str
    user_id: int | None
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    revoked: bool = False
    tags: tuple[str, ...] = ()
    expiration: datetime | None = None
    created_at: datetime | None = None
    description: str = ""

    def problem(self, now: datetime) -> str | None:
        """Why this key cannot register a node now, or None."""
        if self.revoked:
            return "pre-auth key has been revoked: create a new one with `headscale preauthkeys create`"
        if self.expiration is not None and self.expiration <= now:
            return (f"pre-auth key expired at {self.expiration.isoformat(timespec='seconds')}: "
                    "create a new one with `headscale preauthkeys create`")
        if self.used and not self.reusable:
            return self.problem_when_used()
        return None

    def problem_when_used(self) -> str:
        return "pre-auth key was already used: single-use keys register one node; create a new one or use --reusable"


@dataclass(frozen=True)
class APIKey:
    id: int
    prefix: str
    scope: str = "admin"
    expiration: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime | None = None
