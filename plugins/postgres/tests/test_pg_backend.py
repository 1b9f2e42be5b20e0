"""The backend against a real PostgreSQL 15: schema from the shared Alembic history, a state
service on top, and the same answers as SQLite."""

from __future__ import annotations

from pathlib import Path

from headscale_postgres.backend import PostgresBackend
from headscale_postgres.settings import PostgresSettings
from headscale_postgres.testing import PostgresCluster
from sqlalchemy import text

from headscale_core.storage import migrate
from headscale_core.testing.inprocess import running


async def test_schema_comes_from_the_shared_migrations(pg_database: PostgresSettings) -> None:
    backend = PostgresBackend(pg_database)
    await backend.open()
    try:
        async with backend.transaction() as s:
            revision = await s.scalar(text("SELECT version_num FROM alembic_version"))
            tables = set((await s.scalars(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).all())
        assert revision == migrate.head_revision()
        assert {"users", "nodes", "pre_auth_keys", "api_keys", "policies", "registrations", "audit_events"} <= tables
    finally:
        await backend.close()


async def test_server_on_postgres_keeps_users_and_keys_across_restart(
        pg_cluster: PostgresCluster, pg_database: PostgresSettings, tmp_path: Path) -> None:
    database = pg_cluster.database_config(pg_database)
    async with running(tmp_path / "a", database=database) as srv:
        alice = await srv.state.create_user("alice", email="alice@example.test")
        key, secret = await srv.state.create_preauth_key(alice, reusable=True, tags=["tag:web"])
    async with running(tmp_path / "b", database=database) as srv:
        assert [u.name for u in srv.state.users()] == ["alice"]
        found = await srv.state.preauth_key_by_text(secret)
        assert found.id == key.id and found.tags == ("tag:web",) and found.expiration == key.expiration
