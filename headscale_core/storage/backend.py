"""The storage backend: an async SQLAlchemy engine plus migrations, chosen by ``database.type``.

A backend knows how to connect and how to explain a failure; everything above it
(repositories, state) is the same for every database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from headscale_core.errors import StorageError
from headscale_core.storage import migrate

log = logging.getLogger(__name__)


class StorageBackend:
    """Base class: subclasses build the engine in ``create_engine`` and name the database."""

    name = "abstract"
    preferred_change_bus = "local"

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self.observe_transaction: Callable[[float], None] | None = None
        """Called with each transaction's duration in seconds (the server's db metric)."""

    def create_engine(self) -> AsyncEngine:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data lives, for messages (``sqlite /var/lib/headscale/db.sqlite``)."""
        return self.name

    def explain(self, exc: BaseException) -> str:
        """Turn a driver error into one line naming the problem and the fix."""
        return f"cannot open the {self.describe()} database: {exc}"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageError("storage is not open: call open() first")
        return self._engine

    async def open(self, *, migrate_schema: bool = True) -> None:
        """Connect and (by default) bring the schema to the newest revision."""
        self._engine = self.create_engine()
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(migrate.check_and_upgrade, migrate_schema)
        except StorageError:
            await self.close()
            raise
        except Exception as exc:  # driver errors differ per backend; each explains its own
            await self.close()
            raise StorageError(self.explain(exc)) from exc

    async def close(self) -> None:
        # Forget the session factory too: a late user must get "not open", not a silent new
        # connection on a disposed engine that nobody will ever close.
        self._sessions = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction, committed on success, rolled back on error; timed."""
        started = time.perf_counter()
        try:
            async with self.open_transaction() as session:
                yield session
        finally:
            if self.observe_transaction is not None:
                self.observe_transaction(time.perf_counter() - started)

    @asynccontextmanager
    async def open_transaction(self) -> AsyncIterator[AsyncSession]:
        """What ``transaction`` times: backends override this one (to retry a lost connection, say)."""
        if self._sessions is None:
            raise StorageError("storage is not open: call open() first")
        async with self._sessions() as session, session.begin():
            yield session

    async def backup(self, destination: str) -> None:
        raise StorageError(f"{self.name} has no built-in backup: use the database's own tools")

    def sync_url(self) -> Any:
        """A synchronous SQLAlchemy URL for tools (db migrate)."""
        raise NotImplementedError
