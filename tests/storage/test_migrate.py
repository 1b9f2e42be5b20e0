"""Schema revisions: the newest one read from the scripts without Alembic agrees with Alembic's,
and a server started on a database already at it never imports Alembic (~11 MB resident)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from headscale_core.builtin.sqlite_storage import SqliteBackend
from headscale_core.storage import migrate

_OPEN = """
import asyncio, json, sys
from pathlib import Path
from headscale_core.builtin.sqlite_storage import SqliteBackend

async def main():
    backend = SqliteBackend(Path(sys.argv[1]))
    await backend.open()
    await backend.close()

asyncio.run(main())
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "alembic")))
"""


def _alembic_modules_after_open(path: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _OPEN, str(path)], capture_output=True, text=True,
                         check=True, timeout=60)
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_the_scripts_head_is_alembics() -> None:
    assert migrate.scripted_head() == migrate.head_revision()


def test_a_database_at_the_newest_revision_opens_without_alembic(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    assert _alembic_modules_after_open(path), "an empty database is migrated by Alembic"
    assert _alembic_modules_after_open(path) == []


async def test_a_database_without_a_revision_is_still_migrated(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "db.sqlite")
    await backend.open()
    async with backend.engine.begin() as conn:
        tables = (await conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars().all()
        for table in tables:
            await conn.exec_driver_sql(f'DROP TABLE "{table}"')
    await backend.close()
    await backend.open()
    async with backend.engine.begin() as conn:
        assert await conn.run_sync(migrate.recorded_revision) == migrate.head_revision()
        assert (await conn.exec_driver_sql("SELECT count(*) FROM users")).scalar() == 0
    await backend.close()
