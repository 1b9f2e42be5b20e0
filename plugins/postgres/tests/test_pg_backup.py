"""Backups of a PostgreSQL-backed server: ``headscale db backup`` writes a ``pg_dump``; restored
with ``pg_restore`` into a fresh database, a server serves the same tailnet from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from headscale_postgres.testing import PostgresCluster

from headscale_core.testing.inprocess import running
from headscale_core.testing.serverproc import headscale_binary
from headscale_core.testing.simnode import SimNode as Machine
from headscale_core.testing.simnode import next_message


async def test_backup_restore_into_a_fresh_database_and_serve(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    database = pg_cluster.database_config(pg_cluster.create_database())
    async with running(data_dir, database=database) as srv:
        user = await srv.state.create_user("alice")
        _, key = await srv.state.create_preauth_key(user, reusable=True)
        machines = [Machine(srv.url, "alpha"), Machine(srv.url, "beta")]
        for m in machines:
            await m.connect()
            await m.register(key)
            await m.close()
        nodes = {n.given_name: (n.id, n.ipv4) for n in srv.state.nodes()}

        dump = tmp_path / "headscale.dump"
        backup = subprocess.run([str(headscale_binary()), "-c", str(data_dir / "config.yaml"), "db", "backup",
                                 str(dump)], capture_output=True, text=True, timeout=120)
        assert backup.returncode == 0, backup.stderr
        assert f"backup written to {dump}" in backup.stdout

    fresh = pg_cluster.create_database()
    restored = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={fresh.name}", str(dump)],
                              capture_output=True, text=True, env=fresh.libpq_env())
    assert restored.returncode == 0, restored.stderr

    async with running(data_dir, database=pg_cluster.database_config(fresh)) as srv:
        assert {n.given_name: (n.id, n.ipv4) for n in srv.state.nodes()} == nodes
        alpha = machines[0]
        await alpha.connect(srv.url)
        assert (await alpha.client.register(alpha.node.node_public()))["MachineAuthorized"] is True
        first = await next_message(alpha.client.map_stream(alpha.map_request()))
        assert [p["ID"] for p in first["Peers"]] == [nodes["beta"][0]]
        # the restored sequences continue after the copied rows
        assert (await srv.state.create_user("bob")).id == user.id + 1
        await alpha.close()


def test_backup_without_pg_dump_says_what_to_install(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    from headscale_core.testing.inprocess import test_config

    test_config(tmp_path, database=pg_cluster.database_config(pg_cluster.create_database()))
    result = subprocess.run([str(headscale_binary()), "-c", str(tmp_path / "config.yaml"), "db", "upgrade"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([str(headscale_binary()), "-c", str(tmp_path / "config.yaml"), "db", "backup",
                             str(tmp_path / "x.dump")], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(tmp_path / "empty-bin")})
    assert result.returncode != 0
    assert "pg_dump not found" in result.stderr
