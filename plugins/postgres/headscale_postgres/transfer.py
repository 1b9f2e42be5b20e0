"""``headscale db migrate --from URL --to URL``: copy a whole tailnet between databases.

Both ends use the core's tables, so the copy is table by table in foreign-key order with
primary keys kept: node IDs, keys and addresses stay what clients and peers know. The source
is only read (it must already be at the current schema); the target gets the schema from the
shared migrations, must be empty, and is written in one transaction, so a failure leaves it
as it was. Row counts are compared afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Integer, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from headscale_core.builtin.sqlite_storage import SqliteBackend
from headscale_core.errors import ConfigError, StorageError
from headscale_core.storage.backend import StorageBackend
from headscale_core.storage.models import Base

CHUNK = 500


def backend_from_url(url: str, *, must_exist: bool = False) -> StorageBackend:
    """``sqlite:///path/db.sqlite`` or ``postgresql://user:pass@host:port/name``."""
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(f"{url!r}: write sqlite:///absolute/path/db.sqlite (three slashes, absolute path)")
        if must_exist and not Path(path).is_file():
            raise ConfigError(f"{path} does not exist: check the path of the SQLite database")
        return SqliteBackend(Path(path))
    if url.startswith(("postgres://", "postgresql://")):
        from headscale_postgres.backend import PostgresBackend
        from headscale_postgres.settings import settings_from_url

        return PostgresBackend(settings_from_url(url), reconnect_timeout=10.0)
    raise ConfigError(f"{url!r} is neither sqlite:///path nor postgresql://user:pass@host:port/name")


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    rows: dict[str, int]

    def summary(self) -> str:
        counts = ", ".join(f"{n} {table}" for table, n in self.rows.items())
        return f"copied {counts} from {self.source} to {self.target}"


async def copy_tailnet(source: StorageBackend, target: StorageBackend) -> CopyReport:
    """Copy every table of ``source`` into the empty ``target``; both are opened and closed here."""
    if source.describe() == target.describe():
        raise ConfigError("--from and --to name the same database")
    await source.open(migrate_schema=False)
    try:
        await target.open(migrate_schema=True)
        try:
            return await _copy(source, target)
        finally:
            await target.close()
    finally:
        await source.close()


async def _copy(source: StorageBackend, target: StorageBackend) -> CopyReport:
    tables = Base.metadata.sorted_tables  # parents before children
    async with target.transaction() as t:
        for table in tables:
            if await t.scalar(select(func.count()).select_from(table)):
                raise StorageError(f"{target.describe()} already holds data (table {table.name}): "
                                   "migrate into an empty database; nothing was written")
    rows: dict[str, int] = {}
    async with source.transaction() as s, target.transaction() as t:
        for table in tables:
            result = await s.execute(select(table).order_by(*table.primary_key.columns))
            batch: list[dict[str, object]] = []
            count = 0
            for row in result.mappings():
                batch.append(dict(row))
                if len(batch) >= CHUNK:
                    await t.execute(insert(table), batch)
                    count, batch = count + len(batch), []
            if batch:
                await t.execute(insert(table), batch)
                count += len(batch)
            rows[table.name] = count
        if target.engine.dialect.name == "postgresql":
            await _advance_sequences(t)
    async with target.transaction() as t:
        for table in tables:
            copied = await t.scalar(select(func.count()).select_from(table))
            if copied != rows[table.name]:
                raise StorageError(f"{table.name}: {rows[table.name]} row(s) read but {copied} in the target")
    return CopyReport(source.describe(), target.describe(), rows)


async def _advance_sequences(t: AsyncSession) -> None:
    """Rows were inserted with their IDs, so each serial sequence must move past the largest."""
    for table in Base.metadata.sorted_tables:
        (pk,) = table.primary_key.columns
        if isinstance(pk.type, Integer) and pk.autoincrement in (True, "auto"):
            await t.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk.name}'), "
                f"COALESCE((SELECT max({pk.name}) FROM {table.name}), 0) + 1, false)"))
