"""``headscale serve`` against a PostgreSQL it cannot use: one clear line, a non-zero exit, and
nothing written to the database."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from headscale_postgres.testing import PASSWORD, PostgresCluster

from headscale_core.testing.netns import free_loopback_port
from headscale_core.testing.serverproc import base_config, headscale_binary, merge


def serve(workdir: Path, database: dict[str, Any], env: dict[str, str] | None = None,
          command: tuple[str, ...] = ("serve",)) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = merge(base_config(workdir, free_loopback_port(), free_loopback_port()), {"database": database})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([str(headscale_binary()), "-c", str(workdir / "config.yaml"), *command],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


def postgres(cluster: PostgresCluster, name: str, **changes: Any) -> dict[str, Any]:
    return {"type": "postgres", "postgres": {"host": "127.0.0.1", "port": cluster.port, "name": name,
                                             "user": "postgres", "pass": "${DB_PASSWORD}", "ssl": False, **changes}}


def tables(cluster: PostgresCluster, name: str) -> str:
    return cluster.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
                        "WHERE schemaname = 'public'", name)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # Alembic's INFO lines may come first (core logging); the failure itself is one line.
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_password_from_the_environment_works(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    """The good case first, so the failures below fail for their stated reason."""
    name = pg_cluster.create_database().name
    result = serve(tmp_path, postgres(pg_cluster, name), {"DB_PASSWORD": PASSWORD}, ("db", "upgrade"))
    assert result.returncode == 0, result.stderr
    assert "users" in tables(pg_cluster, name)


def test_wrong_password(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    name = pg_cluster.create_database().name
    line = one_error_line(serve(tmp_path, postgres(pg_cluster, name), {"DB_PASSWORD": "not-the-password"}))
    assert "refused the password of user 'postgres'" in line and "database.postgres.pass" in line
    assert "not-the-password" not in line
    assert tables(pg_cluster, name) == ""


def test_unreachable_host(tmp_path: Path) -> None:
    port = free_loopback_port()  # nothing listens there
    database = {"type": "postgres", "postgres": {"host": "127.0.0.1", "port": port, "pass": "x"}}
    line = one_error_line(serve(tmp_path, database))
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}: connection refused" in line


def test_missing_database(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    line = one_error_line(serve(tmp_path, postgres(pg_cluster, "no_such_db"), {"DB_PASSWORD": PASSWORD}))
    assert "database 'no_such_db' does not exist" in line and "createdb" in line


def test_missing_password_variable(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    result = serve(tmp_path, postgres(pg_cluster, "postgres"))
    assert result.returncode != 0
    assert "DB_PASSWORD is not set" in result.stderr


@pytest.mark.parametrize("revision", ["9999_from_the_future"])
def test_schema_from_a_newer_release(pg_cluster: PostgresCluster, tmp_path: Path, revision: str) -> None:
    name = pg_cluster.create_database().name
    pg_cluster.psql(f"CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
                    f"INSERT INTO alembic_version VALUES ('{revision}')", name)
    line = one_error_line(serve(tmp_path, postgres(pg_cluster, name), {"DB_PASSWORD": PASSWORD}))
    assert f"schema is at revision {revision}" in line and "newer release" in line
    assert tables(pg_cluster, name) == "alembic_version"
    assert pg_cluster.psql("SELECT version_num FROM alembic_version", name) == revision


def test_tls_asked_of_a_server_without_it(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    name = pg_cluster.create_database().name
    line = one_error_line(serve(tmp_path, postgres(pg_cluster, name, ssl=True), {"DB_PASSWORD": PASSWORD}))
    assert "TLS to PostgreSQL" in line and "database.postgres.ssl 'require'" in line and "rejected SSL" in line
    assert tables(pg_cluster, name) == ""
