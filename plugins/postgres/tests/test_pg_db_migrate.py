"""``headscale db migrate``: SQLite -> PostgreSQL -> SQLite without loss, and a server restarted
on the new store serves the same nodes to clients that keep their keys."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from headscale_postgres.backend import PostgresBackend
from headscale_postgres.settings import PostgresSettings
from headscale_postgres.testing import PostgresCluster
from sqlalchemy import select

from headscale_core.builtin.sqlite_storage import SqliteBackend
from headscale_core.storage.backend import StorageBackend
from headscale_core.storage.models import Base
from headscale_core.testing.inprocess import running
from headscale_core.testing.serverproc import headscale_binary
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.simnode import next_message

POLICY = '{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]}]}'


def url_of(settings: PostgresSettings) -> str:
    return f"postgresql://{settings.user}:{settings.password}@{settings.host}:{settings.port}/{settings.name}"


def migrate(source: str, target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(headscale_binary()), "db", "migrate", "--from", source, "--to", target],
                          capture_output=True, text=True, timeout=120)


async def dump(backend: StorageBackend) -> dict[str, list[dict[str, Any]]]:
    await backend.open(migrate_schema=False)
    try:
        async with backend.transaction() as s:
            return {table.name: [dict(r) for r in (await s.execute(
                select(table).order_by(*table.primary_key.columns))).mappings()]
                for table in Base.metadata.sorted_tables}
    finally:
        await backend.close()


async def build_tailnet(data_dir: Path) -> tuple[list[Machine], dict[str, Any]]:
    """Users, a used and an unused pre-auth key, an API key, a database policy, two nodes, audit."""
    async with running(data_dir, policy={"mode": "database"}) as srv:
        alice = await srv.state.create_user("alice", email="alice@example.test")
        await srv.state.create_user("bob")
        _, key = await srv.state.create_preauth_key(alice, reusable=True)
        await srv.state.create_preauth_key(None, tags=["tag:server"], description="spare")
        await srv.state.create_api_key()
        await srv.state.set_policy(POLICY)
        machines = [Machine(srv.url, "alpha"), Machine(srv.url, "beta")]
        for m in machines:
            await m.connect()
            assert (await m.register(key))["MachineAuthorized"] is True
            await m.close()
        nodes = {n.given_name: (n.id, n.ipv4, n.ipv6, n.node_key) for n in srv.state.nodes()}
    return machines, nodes


async def test_sqlite_to_postgres_and_back_without_loss(
        pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    machines, nodes = await build_tailnet(data_dir)
    sqlite_path = data_dir / "db.sqlite"
    pg = pg_cluster.create_database()

    result = migrate(f"sqlite://{sqlite_path}", url_of(pg))
    assert result.returncode == 0, result.stderr
    assert "2 users" in result.stdout and "2 nodes" in result.stdout and "2 pre_auth_keys" in result.stdout
    original = await dump(SqliteBackend(sqlite_path))
    assert original["audit_events"], "the tailnet should have an audit trail to copy"
    assert await dump(PostgresBackend(pg)) == original

    # the server restarted on PostgreSQL (same data_dir, so the same noise key) serves the same nodes
    database = pg_cluster.database_config(pg)
    async with running(data_dir, database=database, policy={"mode": "database"}) as srv:
        assert srv.state.policy.text == POLICY
        alpha, beta = machines
        alpha.url = srv.url
        await alpha.connect()
        again = await alpha.client.register(alpha.node.node_public())  # no auth key: it is known
        assert again["MachineAuthorized"] is True and again["Login"]["LoginName"] == "alice@example.test"
        stream = alpha.client.map_stream(alpha.map_request())
        first = await next_message(stream)
        assert first["Node"]["ID"] == nodes["alpha"][0]
        assert first["Node"]["Addresses"] == [f"{nodes['alpha'][1]}/32", f"{nodes['alpha'][2]}/128"]
        assert [(p["ID"], p["Key"]) for p in first["Peers"]] == [(nodes["beta"][0], nodes["beta"][3])]
        # new rows do not collide with copied IDs (sequences moved past them)
        carol = await srv.state.create_user("carol")
        assert carol.id == 3
        await alpha.close()

    # and back into a fresh SQLite file
    back = tmp_path / "back.sqlite"
    result = migrate(url_of(pg), f"sqlite://{back}")
    assert result.returncode == 0, result.stderr
    assert await dump(SqliteBackend(back)) == await dump(PostgresBackend(pg))


async def test_migrate_refuses_a_target_that_holds_data(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    await build_tailnet(tmp_path / "server")
    pg = pg_cluster.create_database()
    source = f"sqlite://{tmp_path / 'server' / 'db.sqlite'}"
    assert migrate(source, url_of(pg)).returncode == 0
    before = await dump(PostgresBackend(pg))
    again = migrate(source, url_of(pg))
    assert again.returncode != 0
    assert "already holds data (table api_keys)" in again.stderr and "nothing was written" in again.stderr
    assert await dump(PostgresBackend(pg)) == before


def test_migrate_explains_bad_urls(tmp_path: Path) -> None:
    missing = migrate(f"sqlite://{tmp_path}/nope.sqlite", "postgresql://u:p@127.0.0.1:1/x")
    assert missing.returncode != 0 and "nope.sqlite does not exist" in missing.stderr
    assert not (tmp_path / "nope.sqlite").exists()
    wrong = migrate("mysql://x", "sqlite:///tmp/x.sqlite")
    assert wrong.returncode != 0 and "neither sqlite:///path nor postgresql://" in wrong.stderr
