"""The storage conformance suite run against the built-in SQLite backend (WAL and rollback
journal), plus what only SQLite does: a file that is not a database is left untouched."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from headscale_core.builtin.sqlite_storage import SqliteBackend
from headscale_core.errors import StorageError
from headscale_core.testing.storage_conformance import StorageConformance


class TestSqliteWAL(StorageConformance):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> Callable[[], SqliteBackend]:
        return lambda: SqliteBackend(tmp_path / "data" / "db.sqlite")

    @pytest.fixture
    def backup_reader(self) -> Callable[[str], SqliteBackend]:
        return lambda destination: SqliteBackend(Path(destination))


class TestSqliteRollbackJournal(TestSqliteWAL):
    @pytest.fixture
    def backend_factory(self, tmp_path: Path) -> Callable[[], SqliteBackend]:
        return lambda: SqliteBackend(tmp_path / "db.sqlite", wal=False)


async def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    garbage = b"these are not the bytes of a SQLite database\n" * 200
    path.write_bytes(garbage)
    backend = SqliteBackend(path)
    with pytest.raises(StorageError, match=f"{path} is not a SQLite database"):
        await backend.open()
    assert path.read_bytes() == garbage
    assert os.listdir(tmp_path) == ["db.sqlite"], "no journal or WAL file was created"
