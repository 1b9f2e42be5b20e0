"""The core's storage conformance suite, unchanged, against a real PostgreSQL 15; the backup
test restores ``headscale db backup``'s ``pg_dump`` into a fresh database to read it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from headscale_postgres.backend import PostgresBackend
from headscale_postgres.settings import PostgresSettings
from headscale_postgres.testing import PostgresCluster

from headscale_core.testing.storage_conformance import StorageConformance


def restore(cluster: PostgresCluster, dump: str) -> PostgresSettings:
    """``pg_restore`` a custom-format dump into a new database (the documented restore path)."""
    fresh = cluster.create_database()
    result = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={fresh.name}", dump],
                            capture_output=True, text=True, env=fresh.libpq_env())
    assert result.returncode == 0, result.stderr
    return fresh


class TestPostgres(StorageConformance):
    @pytest.fixture
    def backend_factory(self, pg_database: PostgresSettings) -> Callable[[], PostgresBackend]:
        return lambda: PostgresBackend(pg_database)

    @pytest.fixture
    def backup_reader(self, pg_cluster: PostgresCluster) -> Callable[[str], PostgresBackend]:
        return lambda destination: PostgresBackend(restore(pg_cluster, destination))
