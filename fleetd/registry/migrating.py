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

from fleetd.registry.engine import Access, open_engine, registry_access

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


def upgrade_registry(url: str | None) -> tuple[str | None, str | None]:
    """Migrate the registry at ``url`` to the newest revision; returns the revisions before and after. One this
    user may not write is only read: ``SchemaNotCurrent`` when it is behind, else nothing to do."""
    access = registry_access(url)
    engine = open_engine(url, read_only=access is Access.READ_ONLY)
    try:
        if access is Access.READ_ONLY:
            head = check_current(engine)
            return head, head
        return current_revision(engine), upgrade(engine)
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def stored_revision(url: str | None) -> str | None:
    """The revision of the registry at ``url``, read without creating or writing anything: ``None`` for a
    SQLite file that does not exist yet; a file this user cannot write is opened read-only."""
    access = registry_access(url)
    if access is Access.MISSING:
        return None
    engine = open_engine(url, read_only=access is Access.READ_ONLY)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


class SchemaNotCurrent(RuntimeError):
    """A registry opened read-only whose schema is not the one this fleetd uses (it cannot be migrated)."""

    def __init__(self, current: str | None, head: str, *, newer: bool) -> None:
        self.current, self.head, self.newer = current, head, newer
        if newer:
            message = (
                f"its schema is at revision {current}, newer than this fleetd knows (up to {head}); "
                "use the fleetd that wrote it, or upgrade this one"
            )
        else:
            message = (
                f"its schema is at revision {current or 'empty'} and this fleetd needs {head}; upgrade it with "
                "`fleetd db upgrade` as a user that can write it (e.g. the service's user)"
            )
        super().__init__(message)


def check_current(engine: Engine) -> str:
    """The registry's revision when it is the newest this fleetd ships; else ``SchemaNotCurrent``. For an engine
    that may not write (``open_engine(read_only=True)``), where ``upgrade`` is not possible."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        scripts = ScriptDirectory.from_config(_config())
        known = current is None or current in {script.revision for script in scripts.walk_revisions()}
        raise SchemaNotCurrent(current, head, newer=not known)
    return head


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships migrations
        raise RuntimeError("no registry migrations found")
    return head
