"""SQLAlchemy tables: the persistent state (users, nodes, keys, policy, registrations, audit).

Column names follow Headscale's schema where it has one, so operators recognise them and
``headscale db migrate`` can map a Headscale database. Online status, map sessions and the
DERP map are not persisted: they live in memory.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use datetime.now(UTC)")
        from datetime import UTC

        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        from datetime import UTC

        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(255), default="")
    provider: Mapped[str] = mapped_column(String(64), default="")
    provider_identifier: Mapped[str | None] = mapped_column(String(512), nullable=True)
    profile_pic_url: Mapped[str] = mapped_column(Text, default="")
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("idx_users_provider_identifier", "provider_identifier", unique=True,
              sqlite_where=text("provider_identifier IS NOT NULL"),
              postgresql_where=text("provider_identifier IS NOT NULL")),
        Index("idx_users_name_local", "name", unique=True,
              sqlite_where=text("provider_identifier IS NULL"),
              postgresql_where=text("provider_identifier IS NULL")),
    )


class PreAuthKeyRow(Base):
    __tablename__ = "pre_auth_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    hash: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    reusable: Mapped[bool] = mapped_column(Boolean, default=False)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    expiration: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class NodeRow(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_key: Mapped[str] = mapped_column(String(80), unique=True)
    node_key: Mapped[str] = mapped_column(String(80), unique=True)
    disco_key: Mapped[str] = mapped_column(String(80), default="")
    endpoints: Mapped[list[str]] = mapped_column(JSON, default=list)
    host_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ipv4: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    ipv6: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    given_name: Mapped[str] = mapped_column(String(63), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    register_method: Mapped[str] = mapped_column(String(32), default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    auth_key_id: Mapped[int | None] = mapped_column(ForeignKey("pre_auth_keys.id", ondelete="SET NULL"), nullable=True)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expiry: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    approved_routes: Mapped[list[str]] = mapped_column(JSON, default=list)
    capver: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class APIKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    hash: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16), default="admin")
    expiration: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PolicyRow(Base):
    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RegistrationRow(Base):
    """A pending interactive registration; in the database so any instance can complete it."""

    __tablename__ = "registrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    machine_key: Mapped[str] = mapped_column(String(80))
    node_key: Mapped[str] = mapped_column(String(80))
    old_node_key: Mapped[str] = mapped_column(String(80), default="")
    host_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    expiry: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditRow(Base):
    """Append-only audit log."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(255), default="")
    source: Mapped[str] = mapped_column(String(255), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
