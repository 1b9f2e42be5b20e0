"""Fixtures: one throwaway PostgreSQL 15 cluster per test session (a fresh database per test),
and clusters of their own for tests that stop or restart the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from headscale_postgres.settings import PostgresSettings
from headscale_postgres.testing import PostgresCluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def own_pg_cluster() -> Iterator[PostgresCluster]:
    """A cluster only this test uses, so it may stop and restart it."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_database(pg_cluster: PostgresCluster) -> PostgresSettings:
    """A new, empty database in the session's cluster."""
    return pg_cluster.create_database()


@pytest.fixture
def pg_database_config(pg_cluster: PostgresCluster, pg_database: PostgresSettings) -> dict[str, object]:
    """``database:`` overrides for ``headscale_core.testing.inprocess.running``."""
    return pg_cluster.database_config(pg_database)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "server"
