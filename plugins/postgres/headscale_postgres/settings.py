"""Where the database is: Headscale's ``database.postgres.*`` keys or a ``postgresql://`` URL.

Both end up as one ``PostgresSettings``, from which the SQLAlchemy URL (for the engine), the
asyncpg keyword arguments (for the LISTEN connection of the change bus) and the ``pg_dump``
command line are derived, so every consumer connects the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.engine import URL

from headscale_core.config import Config
from headscale_core.configschema import PostgresSection
from headscale_core.errors import ConfigError

_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class PostgresSettings:
    host: str = "localhost"
    port: int | None = 5432
    name: str = "headscale"
    user: str = "headscale"
    password: str = ""
    sslmode: str = "disable"
    max_open_conns: int = 10
    max_idle_conns: int = 10
    conn_max_idle_time_secs: int = 3600

    @property
    def address(self) -> str:
        """``host:port`` (or the socket directory) for messages; never the password."""
        return self.host if self.host.startswith("/") or self.port is None else f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"postgres {self.user}@{self.address}/{self.name}"

    def sqlalchemy_url(self) -> URL:
        query = {"host": self.host} if self.host.startswith("/") else {}
        return URL.create("postgresql+asyncpg", username=self.user, password=self.password or None,
                          host=None if query else self.host, port=None if query else self.port,
                          database=self.name, query=query)

    def ssl_argument(self) -> Any:
        """asyncpg's ``ssl``: False for ``disable``, otherwise the libpq sslmode name."""
        return False if self.sslmode == "disable" else self.sslmode

    def asyncpg_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` (the change bus's own connection)."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password or None,
                "database": self.name, "ssl": self.ssl_argument(), "timeout": 10}

    def libpq_env(self) -> dict[str, str]:
        """Environment for ``pg_dump``/``psql``: the password stays off the command line."""
        env = dict(os.environ, PGHOST=self.host, PGUSER=self.user, PGDATABASE=self.name, PGSSLMODE=self.sslmode)
        if self.port is not None:
            env["PGPORT"] = str(self.port)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def with_database(self, name: str) -> PostgresSettings:
        from dataclasses import replace

        return replace(self, name=name)


def sslmode_from(value: str, key: str = "database.postgres.ssl") -> str:
    """Headscale writes ``ssl: false``/``true``; libpq names (``verify-full``…) are accepted too."""
    text = str(value).strip().lower()
    if text in ("", "false", "no", "off", "0"):
        return "disable"
    if text in ("true", "yes", "on", "1"):
        return "require"
    if text in _SSL_MODES:
        return text
    raise ConfigError(f"{key} is {value!r}: use false, true, or one of {', '.join(_SSL_MODES)}")


def settings_from(config: Config) -> PostgresSettings:
    """The ``database.postgres`` section, checked; each problem names its key."""
    section: PostgresSection = config.database.postgres
    if not section.host:
        raise ConfigError("database.postgres.host is empty: set the PostgreSQL host (or socket directory) "
                          "for database.type postgres")
    if not section.name:
        raise ConfigError("database.postgres.name is empty: name the database headscale should use")
    if section.max_open_conns < 1:
        raise ConfigError(f"database.postgres.max_open_conns is {section.max_open_conns}: it must be at least 1")
    return PostgresSettings(
        host=section.host, port=section.port, name=section.name, user=section.user, password=section.password,
        sslmode=sslmode_from(section.ssl), max_open_conns=section.max_open_conns,
        max_idle_conns=max(0, section.max_idle_conns), conn_max_idle_time_secs=section.conn_max_idle_time_secs,
    )


def settings_from_url(url: str) -> PostgresSettings:
    """``postgresql://user:pass@host:port/name?sslmode=require`` (``postgres://`` too)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ConfigError(f"{url!r} is not a PostgreSQL URL: write postgresql://user:pass@host:5432/dbname")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = unquote(parts.hostname or query.get("host", "") or "localhost")
    name = unquote(parts.path.lstrip("/")) or "headscale"
    return PostgresSettings(
        host=host, port=parts.port or (None if host.startswith("/") else 5432), name=name,
        user=unquote(parts.username or "headscale"), password=unquote(parts.password or ""),
        sslmode=sslmode_from(query.get("sslmode", "disable"), "sslmode in the URL"),
    )
