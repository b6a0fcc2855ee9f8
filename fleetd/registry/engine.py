"""Database engines for the registry: a SQLite file by default, PostgreSQL for fleets.

SQLite is set up for a registry that several processes write: WAL journal, foreign keys on, a busy timeout,
and ``BEGIN IMMEDIATE`` for write transactions so that two writers never both read and then deadlock on the
upgrade to a write lock (reads stay deferred through ``read_only``). PostgreSQL uses psycopg 3 at READ
COMMITTED; the queries that must be atomic are single conditional statements, which it serialises per row.

A SQLite file is created once, when the engine is made (and not while another process holds its instance lock
or a write-ahead log of a deleted database lies beside it: ``instance_lock.check_before_create``); every
connection then opens it with ``mode=rw``, so a registry deleted under a running process is never silently
created again by the next pooled connection: that connection fails, and the controller says the file is gone.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from fleetd.registry.instance_lock import check_before_create

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_ONLY = "fleetd_read_only"


def default_state_dir() -> Path:
    """``$FLEETD_STATE_DIR``, else ``$XDG_STATE_HOME/fleetd``, else ``~/.local/state/fleetd``."""
    explicit = os.environ.get("FLEETD_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fleetd"


def default_database_url() -> str:
    return f"sqlite:///{default_state_dir() / 'fleetd.db'}"


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` as psycopg 3 URLs; leave everything else alone."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def open_engine(url: str | None = None, *, pool_size: int = 5) -> Engine:
    """An engine for ``url`` (default: the SQLite file under the state dir, created with its directory)."""
    url = normalise_url(url or default_database_url())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    # No pre-ping (a round trip per transaction): a connection the server dropped fails its statement, the
    # pool invalidates it, and the reconcile loop's next cycle gets a fresh one.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite registry URL; ``None`` for in-memory SQLite and for other databases."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _create_once(database: Path) -> None:
    """Make the (missing) registry file, unless ``check_before_create`` refuses (``RegistryFileError``)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    if database.exists():
        return
    check_before_create(database)
    with contextlib.suppress(FileExistsError):  # another process made it meanwhile: either is fine
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))


def _sqlite_engine(url: str, database: str | None) -> Engine:
    file = Path(database) if database and database != ":memory:" else None
    if file is not None:
        _create_once(file)
    # Pooled (the PRAGMAs run once per connection, not per transaction); never share a pooled connection
    # across fork(): fleetd starts processes with exec, and tests and benches spawn.
    pool = {"poolclass": StaticPool} if database in (None, "", ":memory:") else {}
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool)

    if file is not None:
        uri = f"file:{urllib.parse.quote(str(file.absolute()))}?mode=rw"

        @event.listens_for(engine, "do_connect")
        def _open_existing(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
            cargs[:1] = [uri]
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A transaction that only reads: deferred on SQLite (does not block writers), plain on PostgreSQL."""
    with engine.connect() as plain:
        connection = plain.execution_options(**{_READ_ONLY: True})
        with connection.begin():
            yield connection
