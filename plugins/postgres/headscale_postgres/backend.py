"""PostgreSQL storage (``database.type: postgres``): the core's tables, repositories and Alembic
history on an asyncpg engine.

What differs from SQLite is what happens when the server goes away. A transaction first
checks its connection out of the pool and drops it if its socket was closed; while PostgreSQL is unreachable that step
is retried with backoff and logged, so a restart of the database delays writes instead of
losing them. A connection that dies *inside* a transaction cannot be replayed from here (the
caller's code is the transaction), so it is rolled back, logged, and the error reaches the
caller: never a write that silently did not happen.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from headscale_core.errors import StorageError
from headscale_core.storage.backend import StorageBackend
from headscale_postgres.failures import explain, is_disconnect, root_cause
from headscale_postgres.settings import PostgresSettings

log = logging.getLogger("headscale_postgres")


class PostgresBackend(StorageBackend):
    name = "postgres"
    preferred_change_bus = "postgres"

    def __init__(self, settings: PostgresSettings, *, echo: bool = False, reconnect_timeout: float = 60.0) -> None:
        super().__init__()
        self.settings = settings
        self.echo = echo
        self.reconnect_timeout = reconnect_timeout

    def describe(self) -> str:
        return self.settings.describe()

    def create_engine(self) -> AsyncEngine:
        s = self.settings
        pool_size = max(1, min(s.max_idle_conns or 1, s.max_open_conns))
        return create_async_engine(
            s.sqlalchemy_url(),
            echo=self.echo,
            pool_size=pool_size,
            max_overflow=s.max_open_conns - pool_size,
            # SQLAlchemy has no idle timeout; recycling after the idle time bounds a connection's age instead.
            pool_recycle=s.conn_max_idle_time_secs if s.conn_max_idle_time_secs > 0 else -1,
            # No pre-ping: it costs a round trip per transaction. _checkout asks asyncpg instead
            # whether the socket is still open, which catches a restarted server.
            pool_pre_ping=False,
            connect_args={"ssl": s.ssl_argument(), "timeout": 10,
                          "server_settings": {"application_name": "headscale"}},
        )

    def explain(self, exc: BaseException) -> str:
        return explain(self.settings, exc)

    @asynccontextmanager
    async def open_transaction(self) -> AsyncIterator[AsyncSession]:
        if self._sessions is None:
            raise StorageError("storage is not open: call open() first")
        async with self._sessions() as session:
            await self._checkout(session)
            try:
                yield session
                await session.commit()
            except Exception as exc:
                if is_disconnect(exc):
                    log.error("lost the connection to %s inside a transaction (%s): it was not applied (if the "
                              "commit itself was cut off it may have been) and the caller gets the error",
                              self.describe(), root_cause(exc))
                raise

    async def _checkout(self, session: AsyncSession) -> None:
        """Begin the session's transaction on a live connection, waiting out an outage."""
        started = time.monotonic()
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                conn = await session.connection()
                raw = await conn.get_raw_connection()
                if raw.driver_connection is None or raw.driver_connection.is_closed():
                    await conn.invalidate()
                    raise ConnectionResetError("the pooled connection was closed by the server")
            except Exception as exc:
                waited = time.monotonic() - started
                if not is_disconnect(exc):
                    raise
                await session.rollback()  # forget the failed begin; the next attempt starts clean
                if waited + delay > self.reconnect_timeout:
                    raise StorageError(f"{self.describe()} has been unreachable for {waited:.0f} s: "
                                       f"{self.explain(exc)}") from exc
                log.warning("%s is unreachable (%s); retrying in %.1f s (attempt %d, giving up after %.0f s)",
                            self.describe(), root_cause(exc), delay, attempt, self.reconnect_timeout)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if attempt > 1:
                log.warning("reconnected to %s after %.1f s", self.describe(), time.monotonic() - started)
            return

    async def backup(self, destination: str) -> None:
        """``pg_dump --format=custom`` (a consistent snapshot); restore with ``pg_restore``."""
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            raise StorageError("pg_dump not found: install the PostgreSQL client (Debian: postgresql-client-15)")
        proc = await asyncio.create_subprocess_exec(
            pg_dump, "--format=custom", "--no-owner", f"--file={destination}", env=self.settings.libpq_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise StorageError(f"pg_dump of {self.describe()} failed: {err.decode(errors='replace').strip()}")
