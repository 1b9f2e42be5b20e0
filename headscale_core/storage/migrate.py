"""Alembic migrations shipped inside the package, applied on start-up and by ``db upgrade``."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from headscale_core.errors import StorageError

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _known(script: ScriptDirectory, revision: str) -> bool:
    # Alembic raises (rather than returning None) for a revision it has no script for.
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def check_and_upgrade(connection: Connection, upgrade: bool = True) -> None:
    """Refuse a schema from a newer release; otherwise upgrade to head (when asked)."""
    from alembic import command

    script = ScriptDirectory.from_config(alembic_config())
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
