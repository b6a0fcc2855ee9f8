"""Database engines for the registry: a SQLite file by default, PostgreSQL for fleets.

SQLite is set up for a registry that several processes write: WAL journal, foreign keys on, a busy timeout,
and ``BEGIN IMMEDIATE`` for write transactions so that two writers never both read and then deadlock on the
upgrade to a write lock (reads stay deferred through ``read_only``). PostgreSQL uses psycopg 3 at READ
COMMITTED; the queries that must be atomic are single conditional statements, which it serialises per row.

A SQLite registry this user cannot write (an operator in the service's group reading ``/var/lib/fleetd``) is
opened read-only by ``open_engine(url, read_only=True)``: nothing is created, not even its directory or the
WAL's shared-memory file, and no statement writes. ``registry_access`` says which of the two applies.

A writable SQLite file is created once, when the engine is made (and not while another process holds its
instance lock or a write-ahead log of a deleted database lies beside it: ``instance_lock.check_before_create``);
every connection then opens it with ``mode=rw``, so a registry deleted under a running process is never
silently created again by the next pooled connection: that connection fails, and the controller says the file
is gone.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator
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


class Access(enum.StrEnum):
    """What this user can do with a registry."""

    WRITABLE = "writable"
    """Read and write (a server database always counts as writable: its role decides, at the first write)."""
    READ_ONLY = "read-only"
    """A SQLite file this user may read but not write, or a URL that says ``mode=ro`` / ``immutable=1``."""
    MISSING = "missing"
    """A SQLite file that does not exist yet (the first command that writes creates it)."""


def sqlite_file(url: str | None) -> Path | None:
    """The file of a SQLite registry URL (``sqlite:///PATH``, or ``sqlite:///file:PATH?...&uri=true``);
    ``None`` for an in-memory database or a server database."""
    url = normalise_url(url or default_database_url())
    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if _is_uri(url):
        if parsed.query.get("mode") == "memory":
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
        if database.startswith("//"):  # file://HOST/PATH; fleetd only ever means the local host
            database = "/" + database[2:].split("/", 1)[-1]
    return Path(database)


def registry_access(url: str | None) -> Access:
    """Whether this user can write the registry at ``url`` (default: the SQLite file under the state dir).

    Raises ``NotADirectoryError`` naming the directory when a missing SQLite file can never be created there
    (a file stands where a directory of its path should be)."""
    url = normalise_url(url or default_database_url())
    path = sqlite_file(url)
    if path is None:
        return Access.WRITABLE
    if not path.exists():
        _check_creatable(path.parent)
        return Access.MISSING
    if _uri_read_only(url):
        return Access.READ_ONLY
    wal, shm = _wal_files(path)
    journal_writable = os.access(path.parent, os.W_OK | os.X_OK) or all(
        f.exists() and os.access(f, os.R_OK | os.W_OK) for f in (wal, shm)
    )
    return Access.WRITABLE if os.access(path, os.R_OK | os.W_OK) and journal_writable else Access.READ_ONLY


def _check_creatable(directory: Path) -> None:
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
            return


def _is_uri(url: str) -> bool:
    return make_url(normalise_url(url)).query.get("uri") == "true"


def _uri_read_only(url: str) -> bool:
    query = make_url(normalise_url(url)).query
    return _is_uri(url) and (query.get("mode") == "ro" or query.get("immutable") == "1")


def _wal_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def open_engine(url: str | None = None, *, pool_size: int = 5, read_only: bool = False) -> Engine:
    """An engine for ``url`` (default: the SQLite file under the state dir, created with its directory).

    ``read_only`` (SQLite only; see ``registry_access``): create nothing and write nothing, for a registry this
    user cannot write. Any statement that writes then fails with SQLite's "attempt to write a readonly
    database"."""
    url = normalise_url(url or default_database_url())
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, read_only=read_only)
    # No pre-ping (a round trip per transaction): a connection the server dropped fails its statement, the
    # pool invalidates it, and the reconcile loop's next cycle gets a fresh one.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


def _create_once(database: Path) -> None:
    """Make the (missing) registry file, unless ``check_before_create`` refuses (``RegistryFileError``)."""
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if database.exists():
        return
    check_before_create(database)
    with contextlib.suppress(FileExistsError):  # another process made it meanwhile: either is fine
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _sqlite_engine(url: str, *, read_only: bool) -> Engine:
    path = sqlite_file(url)
    existing_only = path is not None and not read_only and not _is_uri(url)
    if existing_only:
        assert path is not None
        _create_once(path)
    # Pooled (the PRAGMAs run once per connection, not per transaction); never share a pooled connection
    # across fork(): fleetd starts processes with exec, and tests and benches spawn.
    options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    if path is None:
        options["poolclass"] = StaticPool
    elif read_only and not _uri_read_only(url):
        options["creator"] = _read_only_connector(path)
    engine = create_engine(url, **options)
    if existing_only:
        assert path is not None
        _open_existing_only(engine, path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun by the "begin" hook below
        cursor = dbapi_connection.cursor()
        if not read_only:  # a registry is made in WAL mode; a read-only connection may not set it
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        deferred = read_only or connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


def _open_existing_only(engine: Engine, path: Path) -> None:
    """Every connection opens the file with ``mode=rw``: one deleted under a running process fails, never
    comes back empty."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        cargs[:1] = [uri]
        cparams["uri"] = True


def _read_only_connector(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that open ``path`` read-only and create nothing. With a WAL file beside it (a controller has
    the registry open), ``mode=ro`` reads the newest commits through the WAL and its shared memory, which that
    controller made; with none, every commit is in the file itself and ``immutable=1`` reads it without the
    shared-memory file that ``mode=ro`` would create (and could not, in a directory this user may not write)."""
    wal, _shm = _wal_files(path)
    uri = f"{path.absolute().as_uri()}?{'mode=ro' if wal.exists() else 'immutable=1'}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )

    return connect


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A transaction that only reads: deferred on SQLite (does not block writers), plain on PostgreSQL."""
    with engine.connect() as plain:
        connection = plain.execution_options(**{_READ_ONLY: True})
        with connection.begin():
            yield connection
