"""A throwaway PostgreSQL 15 cluster on 127.0.0.1 for tests (docs: real-components §4).

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user and
every server command runs through ``runuser``. The port is below the kernel's ephemeral range,
and the cluster lives in a temp directory that ``remove()`` deletes. Host connections need the
password (scram-sha-256), so a wrong password is refused as it would be in production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from headscale_core.testing.netns import free_loopback_port
from headscale_postgres.settings import PostgresSettings

PG_BIN = Path(os.environ.get("HEADSCALE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "postgres"
PASSWORD = "throwaway-test-password"


class PostgresCluster:
    """``start()``, ``create_database()``, ``restart()``, ``stop()``, ``remove()``."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN}/initdb not found: install PostgreSQL 15 (Debian: apt-get install "
                               "postgresql-15, as scripts/setup does) or set HEADSCALE_PG_BIN")
        self.base = Path(tempfile.mkdtemp(prefix="headscale-pg-"))
        self.data = self.base / "data"
        self.port = free_loopback_port()
        self._owner = _owner()
        if self._owner is not None:
            os.chown(self.base, self._owner.pw_uid, self._owner.pw_gid)
        pwfile = self.base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._owner is not None:
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        self._run(PG_BIN / "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")

    def _run(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in argv]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.base)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                               f"{self.log_tail()}")
        return result

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run(PG_BIN / "pg_ctl", "-D", str(self.data), "-l", str(self.base / "pg.log"), "-w", "-t", "30",
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(PG_BIN / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.base / "pg.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def settings(self, name: str = "postgres", **changes: object) -> PostgresSettings:
        from dataclasses import replace

        base = PostgresSettings(host="127.0.0.1", port=self.port, name=name, user=SUPERUSER, password=PASSWORD,
                                sslmode="disable", max_open_conns=5, max_idle_conns=2)
        return replace(base, **changes)  # type: ignore[arg-type]

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = self.settings(database).libpq_env()
        result = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql],
                                capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str | None = None) -> PostgresSettings:
        name = name or f"hs_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.settings(name)

    def database_config(self, settings: PostgresSettings) -> dict[str, object]:
        """The ``database:`` overrides that point a test server at ``settings``."""
        return {"type": "postgres", "postgres": {
            "host": settings.host, "port": settings.port, "name": settings.name, "user": settings.user,
            "pass": settings.password, "ssl": "false", "max_open_conns": 5, "max_idle_conns": 2}}


def _owner() -> pwd.struct_passwd | None:
    """The account that owns the cluster when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root and there is no postgres user for initdb: install postgresql-15 "
                           "or run the tests as a non-root user") from exc
