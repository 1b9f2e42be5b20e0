"""What went wrong with PostgreSQL, in one line an operator can act on.

SQLAlchemy wraps asyncpg's exceptions (``DBAPIError.orig`` -> adapter error -> ``__cause__``),
and a refused TCP connection arrives as a bare ``OSError``; ``root_cause`` digs out the driver's
own exception so the classification below sees what the server or the kernel said.
"""

from __future__ import annotations

import asyncio
import socket

import asyncpg
from sqlalchemy.exc import DBAPIError

from headscale_postgres.settings import PostgresSettings

# The server went away or is not accepting connections yet: worth waiting for.
_TRANSIENT = (
    OSError,  # refused, reset, unreachable, and ConnectionError's subclasses
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,  # "terminating connection due to administrator command"
    asyncpg.CrashShutdownError,
    asyncpg.ConnectionFailureError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed" on a socket that died under us
)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost driver or OS exception behind SQLAlchemy's wrappers."""
    seen: set[int] = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "orig", None) if isinstance(current, DBAPIError) else None
        inner = inner or current.__cause__
        if inner is None:
            break
        current = inner
    return current


def is_disconnect(exc: BaseException) -> bool:
    """Did the connection fail (as opposed to the statement)? Such errors are retried."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(root_cause(exc), _TRANSIENT)


def explain(settings: PostgresSettings, exc: BaseException) -> str:
    """One line: what PostgreSQL (or the network) said, which key to check, nothing written."""
    cause = root_cause(exc)
    where = settings.address
    if isinstance(cause, asyncpg.InvalidPasswordError):
        return (f"PostgreSQL at {where} refused the password of user {settings.user!r}: check database.postgres.pass "
                "(and the variable it names, e.g. ${DB_PASSWORD}); nothing was written")
    if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
        return (f"PostgreSQL at {where} refused user {settings.user!r} ({_first_line(cause)}): check "
                "database.postgres.user and pg_hba.conf; nothing was written")
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        return (f"database {settings.name!r} does not exist on PostgreSQL at {where}: create it "
                f"(`createdb -h {settings.host} -U {settings.user} {settings.name}`) or fix database.postgres.name; "
                "nothing was written")
    if isinstance(cause, socket.gaierror):
        return (f"cannot resolve PostgreSQL host {settings.host!r} ({cause.strerror}): check database.postgres.host; "
                "nothing was written")
    if isinstance(cause, ConnectionRefusedError):
        return (f"cannot reach PostgreSQL at {where}: connection refused; is the server running and listening "
                "there? (database.postgres.host/port); nothing was written")
    reason = getattr(cause, "strerror", None) or _first_line(cause)
    if "SSL" in reason or "certificate" in reason:
        return (f"TLS to PostgreSQL at {where} failed with database.postgres.ssl {settings.sslmode!r}: {reason}; "
                "set ssl to what the server offers (false for a server without TLS); nothing was written")
    if isinstance(cause, OSError | asyncio.TimeoutError):
        return (f"cannot reach PostgreSQL at {where}: {reason}; check database.postgres.host/port and the network; "
                "nothing was written")
    return f"cannot use PostgreSQL database {settings.name!r} at {where}: {reason}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
