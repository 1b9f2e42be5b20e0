"""PostgreSQL restarts and dropped connections: writes wait and say so, or fail loudly; none is
silently lost."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from headscale_postgres.backend import PostgresBackend
from headscale_postgres.failures import is_disconnect
from headscale_postgres.testing import PostgresCluster
from sqlalchemy import text

from headscale_core.testing.inprocess import running
from headscale_core.testing.simnode import wait_for


async def test_writes_wait_out_a_restart_and_instances_resync(
        own_pg_cluster: PostgresCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="headscale_postgres")
    database = own_pg_cluster.database_config(own_pg_cluster.create_database())
    async with running(tmp_path / "a", database=database) as a, running(tmp_path / "b", database=database) as b:
        before = await a.state.create_user("before")
        await wait_for(lambda: before.id in b.state.store.users)

        await asyncio.to_thread(own_pg_cluster.stop)
        during = asyncio.create_task(a.state.create_user("during"))
        await asyncio.sleep(1.5)
        assert not during.done(), "the write must wait for the database, not fail or pretend"
        await asyncio.to_thread(own_pg_cluster.start)
        user = await asyncio.wait_for(during, 30)

        assert own_pg_cluster.psql(f"SELECT name FROM users WHERE id = {user.id}",
                                   database["postgres"]["name"]) == "during"  # type: ignore[index]
        await wait_for(lambda: user.id in b.state.store.users, 30)  # B's LISTEN came back and resynced
        after = await b.state.create_user("after")
        await wait_for(lambda: after.id in a.state.store.users, 10)
    messages = [r.getMessage() for r in caplog.records]
    assert any("is unreachable" in m and "retrying in" in m for m in messages), messages
    assert any(m.startswith("reconnected to postgres") for m in messages), messages


async def test_connection_lost_inside_a_transaction_is_an_error_not_a_silent_loss(
        pg_cluster: PostgresCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = pg_cluster.create_database()
    backend = PostgresBackend(settings)
    await backend.open()
    try:
        with pytest.raises(Exception) as info:  # noqa: B017 - whatever the driver raises must reach us
            async with backend.transaction() as s:
                await s.execute(text("INSERT INTO policies (data, created_at, updated_at) "
                                     "VALUES ('{}', now(), now())"))
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                await asyncio.to_thread(pg_cluster.psql, f"SELECT pg_terminate_backend({pid})")
        assert is_disconnect(info.value)
        assert any("inside a transaction" in r.getMessage() for r in caplog.records)
        async with backend.transaction() as s:  # the next transaction reconnects; nothing was half-written
            assert await s.scalar(text("SELECT count(*) FROM policies")) == 0
    finally:
        await backend.close()


async def test_outage_longer_than_the_limit_is_reported(own_pg_cluster: PostgresCluster) -> None:
    backend = PostgresBackend(own_pg_cluster.create_database(), reconnect_timeout=1.0)
    await backend.open()
    try:
        await asyncio.to_thread(own_pg_cluster.stop)
        with pytest.raises(Exception, match=r"has been unreachable for \d+ s: cannot reach PostgreSQL"):
            async with backend.transaction() as s:
                await s.execute(text("SELECT 1"))
    finally:
        await backend.close()
