"""Schema migrations: ``upgrade(engine)`` to the newest revision, run by ``fleetd db upgrade`` and on start.

On PostgreSQL an advisory lock serialises controllers that start at the same moment; on SQLite the write
transaction does. DDL runs in the transaction on both, so a failed upgrade leaves the schema as it was.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

_SCRIPT_LOCATION = "fleetd.registry:migrations"
_ADVISORY_LOCK_KEY = 0x666C656574640001  # "fleetd" + 1


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate to ``revision``; returns the revision the database is at afterwards."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        command.upgrade(_config(connection), revision)
        return MigrationContext.configure(connection).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships migrations
        raise RuntimeError("no registry migrations found")
    return head
