"""Alembic migrations shipped inside the package, applied on start-up and by ``db upgrade``.

Alembic itself (~11 MB resident once imported, for the life of the process) is imported only
when there is work for it: a server started on a database already at the newest revision reads
the recorded revision with one query and compares it with the newest script's, found by reading
the scripts' ``revision``/``down_revision`` lines.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from headscale_core.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"
_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


@cache
def scripted_head() -> str | None:
    """The newest revision, read from the scripts without Alembic; None when that is not one
    revision (several heads, or a script this reader does not understand): ask Alembic then."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_ASSIGNMENT.findall(script.read_text(encoding="utf-8")))
        own = _QUOTED.findall(found.get("revision", ""))
        if len(own) != 1:
            return None
        revisions.add(own[0])
        parents.update(_QUOTED.findall(found.get("down_revision", "")))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def recorded_revision(connection: Connection) -> str | None:
    """The revision the database says it is at (plain SQL); None for an empty database."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    # Alembic raises (rather than returning None) for a revision it has no script for.
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def check_and_upgrade(connection: Connection, upgrade: bool = True) -> None:
    """Refuse a schema from a newer release; otherwise upgrade to head (when asked)."""
    head = scripted_head()
    if head is not None and recorded_revision(connection) == head:
        return
    from alembic import command

    script = _scripts()
    current = current_revision(connection)
    if current is not None and not _known(script, current):
        raise StorageError(
            f"the database schema is at revision {current}, which this release of headscale-core does not know: "
            "it was written by a newer release. Upgrade headscale-core, or restore a backup made before the upgrade"
        )
    if upgrade and current != script.get_current_head():
        command.upgrade(alembic_config(connection), "head")
    elif not upgrade and current != script.get_current_head():
        raise StorageError(
            f"the database schema is at revision {current or 'empty'} but this release needs {script.get_current_head()}: "
            "run `headscale db upgrade`"
        )
