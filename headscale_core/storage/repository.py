"""Async repositories: domain objects in and out of the tables, one function per operation.

Every function takes the session of the caller's transaction, so the state service decides
what is atomic. Nothing here is called on the map hot path: the NodeStore serves reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from headscale_core.events import Event
from headscale_core.state.model import APIKey, Node, PreAuthKey, User
from headscale_core.storage.models import (
    APIKeyRow,
    AuditRow,
    NodeRow,
    PolicyRow,
    PreAuthKeyRow,
    RegistrationRow,
    UserRow,
)

# ---- users ----------------------------------------------------------------------------


def user_from_row(row: UserRow) -> User:
    return User(
        id=row.id, name=row.name, display_name=row.display_name, email=row.email, provider=row.provider,
        provider_identifier=row.provider_identifier, profile_pic_url=row.profile_pic_url,
        groups=tuple(row.groups or ()), created_at=row.created_at,
    )


async def insert_user(s: AsyncSession, user: User, now: datetime) -> User:
    row = UserRow(
        name=user.name, display_name=user.display_name, email=user.email, provider=user.provider,
        provider_identifier=user.provider_identifier, profile_pic_url=user.profile_pic_url,
        groups=list(user.groups), created_at=now, updated_at=now,
    )
    s.add(row)
    await s.flush()
    return user_from_row(row)


async def update_user(s: AsyncSession, user: User, now: datetime) -> None:
    row = await s.get_one(UserRow, user.id)
    row.name, row.display_name, row.email = user.name, user.display_name, user.email
    row.profile_pic_url, row.groups, row.updated_at = user.profile_pic_url, list(user.groups), now


async def delete_user(s: AsyncSession, user_id: int) -> None:
    await s.execute(delete(UserRow).where(UserRow.id == user_id))


async def all_users(s: AsyncSession) -> list[User]:
    return [user_from_row(r) for r in (await s.scalars(select(UserRow).order_by(UserRow.id))).all()]


# ---- nodes ----------------------------------------------------------------------------

_NODE_FIELDS = (
    "machine_key", "node_key", "disco_key", "ipv4", "ipv6", "hostname", "given_name", "user_id",
    "register_method", "auth_key_id", "ephemeral", "last_seen", "expiry", "capver",
)


def node_from_row(row: NodeRow) -> Node:
    return Node(
        id=row.id, endpoints=tuple(row.endpoints or ()), host_info=dict(row.host_info or {}),
        tags=tuple(row.tags or ()), approved_routes=tuple(row.approved_routes or ()),
        created_at=row.created_at, updated_at=row.updated_at,
        **{f: getattr(row, f) for f in _NODE_FIELDS},
    )


# Node fields stored as JSON, and how each is written.
_NODE_JSON_FIELDS: dict[str, Any] = {"endpoints": list, "host_info": dict, "tags": list, "approved_routes": list}
NODE_COLUMNS = frozenset(_NODE_FIELDS) | frozenset(_NODE_JSON_FIELDS)


def _node_values(node: Node, columns: AbstractSet[str]) -> dict[str, Any]:
    """The row values of ``node``'s ``columns``."""
    out: dict[str, Any] = {}
    for f in columns:
        value = getattr(node, f)
        convert = _NODE_JSON_FIELDS.get(f)
        out[f] = convert(value) if convert is not None else value
    return out


def changed_node_fields(old: Node, new: Node) -> set[str]:
    """The stored fields that differ between two versions of a node."""
    return {f for f in NODE_COLUMNS if (was := getattr(old, f)) is not (now := getattr(new, f)) and was != now}


def _fill_node_row(row: NodeRow, node: Node, now: datetime) -> None:
    for f, value in _node_values(node, NODE_COLUMNS).items():
        setattr(row, f, value)
    row.updated_at = now


async def insert_node(s: AsyncSession, node: Node, now: datetime) -> Node:
    row = NodeRow(created_at=now)
    _fill_node_row(row, node, now)
    s.add(row)
    await s.flush()
    return node_from_row(row)


async def update_node(s: AsyncSession, node: Node, now: datetime) -> Node:
    row = await s.get_one(NodeRow, node.id)
    _fill_node_row(row, node, now)
    await s.flush()
    return node_from_row(row)


async def update_nodes(s: AsyncSession, nodes: Sequence[Node], now: datetime,
                       fields: Sequence[AbstractSet[str]] | None = None) -> None:
    """Write ``nodes``' rows in one executemany per set of changed ``fields`` (all of them when
    None): the write-behind of endpoints and last-seen times. After a reconnect storm that is
    thousands of rows, which a load-and-flush per row through the ORM turned into seconds of
    CPU; writing every column re-encoded each node's Hostinfo to JSON to store a timestamp."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for index, node in enumerate(nodes):
        columns = NODE_COLUMNS if fields is None else frozenset(fields[index]) & NODE_COLUMNS
        groups.setdefault(columns, []).append({"id": node.id, "updated_at": now, **_node_values(node, columns)})
    for rows in groups.values():
        await s.execute(update(NodeRow), rows)


async def update_nodes_seen(s: AsyncSession, seen: Sequence[tuple[int, datetime]]) -> None:
    for node_id, when in seen:
        row = await s.get(NodeRow, node_id)
        if row is not None:
            row.last_seen = when


async def delete_node(s: AsyncSession, node_id: int) -> None:
    await s.execute(delete(NodeRow).where(NodeRow.id == node_id))


async def all_nodes(s: AsyncSession) -> list[Node]:
    return [node_from_row(r) for r in (await s.scalars(select(NodeRow).order_by(NodeRow.id))).all()]


# ---- pre-auth keys --------------------------------------------------------------------


def preauth_from_row(row: PreAuthKeyRow) -> PreAuthKey:
    return PreAuthKey(
        id=row.id, prefix=row.prefix, user_id=row.user_id, reusable=row.reusable, ephemeral=row.ephemeral,
        used=row.used, revoked=row.revoked, tags=tuple(row.tags or ()), expiration=row.expiration,
        created_at=row.created_at, description=row.description,
    )


async def insert_preauth_key(s: AsyncSession, key: PreAuthKey, secret_hash: str, now: datetime) -> PreAuthKey:
    row = PreAuthKeyRow(
        prefix=key.prefix, hash=secret_hash, user_id=key.user_id, reusable=key.reusable, ephemeral=key.ephemeral,
        used=False, revoked=False, tags=list(key.tags), expiration=key.expiration, created_at=now,
        description=key.description,
    )
    s.add(row)
    await s.flush()
    return preauth_from_row(row)


async def preauth_key_by_prefix(s: AsyncSession, prefix: str) -> tuple[PreAuthKey, str] | None:
    row = await s.scalar(select(PreAuthKeyRow).where(PreAuthKeyRow.prefix == prefix))
    return (preauth_from_row(row), row.hash) if row else None


async def preauth_key(s: AsyncSession, key_id: int) -> PreAuthKey | None:
    row = await s.get(PreAuthKeyRow, key_id)
    return preauth_from_row(row) if row else None


async def set_preauth_key(s: AsyncSession, key_id: int, **values: Any) -> None:
    row = await s.get_one(PreAuthKeyRow, key_id)
    for name, value in values.items():
        setattr(row, name, value)


async def delete_preauth_key(s: AsyncSession, key_id: int) -> None:
    await s.execute(delete(PreAuthKeyRow).where(PreAuthKeyRow.id == key_id))


async def all_preauth_keys(s: AsyncSession) -> list[PreAuthKey]:
    rows = (await s.scalars(select(PreAuthKeyRow).order_by(PreAuthKeyRow.id))).all()
    return [preauth_from_row(r) for r in rows]


# ---- API keys -------------------------------------------------------------------------


def apikey_from_row(row: APIKeyRow) -> APIKey:
    return APIKey(id=row.id, prefix=row.prefix, scope=row.scope, expiration=row.expiration,
                  last_seen=row.last_seen, created_at=row.created_at)


async def insert_api_key(s: AsyncSession, key: APIKey, secret_hash: str, now: datetime) -> APIKey:
    row = APIKeyRow(prefix=key.prefix, hash=secret_hash, scope=key.scope, expiration=key.expiration, created_at=now)
    s.add(row)
    await s.flush()
    return apikey_from_row(row)


async def api_key_by_prefix(s: AsyncSession, prefix: str) -> tuple[APIKey, str] | None:
    row = await s.scalar(select(APIKeyRow).where(APIKeyRow.prefix == prefix))
    return (apikey_from_row(row), row.hash) if row else None


async def set_api_key(s: AsyncSession, key_id: int, **values: Any) -> None:
    row = await s.get_one(APIKeyRow, key_id)
    for name, value in values.items():
        setattr(row, name, value)


async def delete_api_key(s: AsyncSession, key_id: int) -> None:
    await s.execute(delete(APIKeyRow).where(APIKeyRow.id == key_id))


async def all_api_keys(s: AsyncSession) -> list[APIKey]:
    return [apikey_from_row(r) for r in (await s.scalars(select(APIKeyRow).order_by(APIKeyRow.id))).all()]


# ---- policy ---------------------------------------------------------------------------


async def latest_policy(s: AsyncSession) -> str | None:
    row = await s.scalar(select(PolicyRow).order_by(PolicyRow.id.desc()).limit(1))
    return row.data if row else None


async def store_policy(s: AsyncSession, text: str, now: datetime) -> None:
    s.add(PolicyRow(data=text, created_at=now, updated_at=now))


# ---- pending registrations ------------------------------------------------------------


async def insert_registration(s: AsyncSession, row: RegistrationRow) -> None:
    s.add(row)


async def registration(s: AsyncSession, reg_id: str) -> RegistrationRow | None:
    return await s.get(RegistrationRow, reg_id)


async def delete_registrations_before(s: AsyncSession, when: datetime) -> None:
    await s.execute(delete(RegistrationRow).where(RegistrationRow.expires_at < when))


# ---- audit ----------------------------------------------------------------------------


async def append_audit(s: AsyncSession, event: Event) -> None:
    s.add(AuditRow(time=event.time, kind=event.kind, actor=event.actor, subject=event.subject,
                   source=event.source, details=dict(event.details)))


async def audit_events(s: AsyncSession, since: datetime | None = None, kind: str | None = None,
                       limit: int = 1000) -> list[Event]:
    q = select(AuditRow).order_by(AuditRow.id)
    if since is not None:
        q = q.where(AuditRow.time >= since)
    if kind:
        q = q.where(AuditRow.kind.startswith(kind))
    rows = (await s.scalars(q.limit(limit))).all()
    return [Event(kind=r.kind, actor=r.actor, subject=r.subject, details=dict(r.details or {}),
                  source=r.source, time=r.time) for r in rows]
