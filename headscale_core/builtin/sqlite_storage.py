"""Built-in storage: SQLite in WAL mode (``database.type: sqlite``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from headscale_core.config import Config
from headscale_core.errors import StorageError
from headscale_core.hookspecs import hookimpl
from headscale_core.storage.backend import StorageBackend


class SqliteBackend(StorageBackend):
    name = "sqlite"

    def __init__(self, path: Path, *, wal: bool = True, wal_autocheckpoint: int = 1000, echo: bool = False) -> None:
        super().__init__()
        self.path = path
        self.wal = wal
        self.wal_autocheckpoint = wal_autocheckpoint
        self.echo = echo

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def create_engine(self) -> AsyncEngine:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of database.sqlite.path {self.path.parent}: {exc.strerror}") from exc
        engine = create_async_engine(f"sqlite+aiosqlite:///{self.path}", echo=self.echo)
        wal, checkpoint = self.wal, self.wal_autocheckpoint

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            if wal:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint)}")
            cur.close()

        return engine

    def explain(self, exc: BaseException) -> str:
        text = str(getattr(exc, "orig", exc))
        if "file is not a database" in text:
            return f"{self.path} is not a SQLite database (database.sqlite.path): point it at the right file; nothing was written"
        if "unable to open" in text or "readonly" in text:
            return f"cannot open SQLite database {self.path}: check that the directory exists and is writable by this user"
        return f"cannot open SQLite database {self.path}: {text}"

    def sync_url(self) -> URL:
        return URL.create("sqlite", database=str(self.path))

    async def backup(self, destination: str) -> None:
        """Online, consistent copy through SQLite's backup API (safe under concurrent writes,
        unlike copying the file while a WAL is in use)."""

        def copy() -> None:
            src = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            dst = sqlite3.connect(destination)
            try:
                src.backup(dst)
            finally:
                dst.close()
                src.close()

        await asyncio.to_thread(copy)


def sqlite_backend(config: Config) -> SqliteBackend:
    sq = config.database.sqlite
    return SqliteBackend(config.path(sq.path), wal=sq.write_ahead_log, wal_autocheckpoint=sq.wal_autocheckpoint,
                         echo=config.database.debug)


@hookimpl(trylast=True)
def headscale_storage_backends() -> Mapping[str, Callable[[Config], StorageBackend]]:
    return {"sqlite": sqlite_backend}
