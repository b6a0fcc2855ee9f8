"""A SQLite registry this user cannot write: recognised (``registry_access``), opened read-only without creating
anything (not even the WAL's shared memory or a directory), never migrated, and refused in one sentence when its
schema is not the newest. Runs as root too: there a ``mode=ro`` URL stands in for file permissions."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fleetd.registry.engine import Access, open_engine, registry_access, sqlite_file
from fleetd.registry.facade import open_registry
from fleetd.registry.migrating import SchemaNotCurrent, head_revision, stored_revision, upgrade
from tests.cli.support import unprivileged


def make_registry(path: Path, revision: str = "head") -> str:
    url = f"sqlite:///{path}"
    engine = open_engine(url)
    try:
        upgrade(engine, revision)
    finally:
        engine.dispose()
    return url


def listing(directory: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir())


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A state dir holding a migrated registry, then made read-only (dir 0555, file 0444)."""
    state = tmp_path / "state"
    make_registry(state / "fleetd.db")
    (state / "fleetd.db").chmod(0o444)
    state.chmod(0o555)
    try:
        yield state
    finally:
        state.chmod(0o755)


def test_the_file_of_a_sqlite_url() -> None:
    assert sqlite_file("sqlite:////var/lib/fleetd/fleetd.db") == Path("/var/lib/fleetd/fleetd.db")
    assert sqlite_file("sqlite:///file:/var/lib/fleetd/fleetd.db?mode=ro&uri=true") == Path(
        "/var/lib/fleetd/fleetd.db"
    )
    assert sqlite_file("sqlite://") is None
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://fleetd@db/fleetd") is None


def test_access_of_missing_unreachable_read_only_and_writable_registries(tmp_path: Path) -> None:
    assert registry_access(f"sqlite:///{tmp_path / 'new' / 'fleetd.db'}") is Access.MISSING
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError) as raised:
        registry_access(f"sqlite:///{blocker / 'state' / 'fleetd.db'}")
    assert raised.value.filename == str(blocker / "state")
    url = make_registry(tmp_path / "fleetd.db")
    assert registry_access(url) is Access.WRITABLE
    assert registry_access(f"sqlite:///file:{tmp_path / 'fleetd.db'}?mode=ro&uri=true") is Access.READ_ONLY
    assert registry_access("postgresql://fleetd@db/fleetd") is Access.WRITABLE


def test_a_uri_url_makes_no_directory_named_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_registry(tmp_path / "fleetd.db")
    monkeypatch.chdir(tmp_path)
    engine = open_engine(f"sqlite:///file:{tmp_path / 'fleetd.db'}?mode=ro&uri=true")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM nodes")).scalar_one() == 0
    finally:
        engine.dispose()
    assert not (tmp_path / "file:").exists()


def test_a_read_only_registry_is_read_and_nothing_is_created_or_written(tmp_path: Path) -> None:
    url = make_registry(tmp_path / "state" / "fleetd.db")
    before = listing(tmp_path / "state")
    registry = open_registry(url, read_only=True)
    try:
        assert registry.read_only
        assert registry.snapshot().nodes == ()
        assert not registry.ever_applied()
        assert registry.lease_holder("controller") is None
        with pytest.raises(OperationalError, match="readonly database"):
            registry.create_join_token(ttl_ms=60_000, uses=1)
    finally:
        registry.engine.dispose()
    assert listing(tmp_path / "state") == before, "the read-only registry created or changed a file"


def test_a_read_only_registry_behind_the_schema_is_refused_not_migrated(tmp_path: Path) -> None:
    url = make_registry(tmp_path / "fleetd.db", "0007")
    with pytest.raises(SchemaNotCurrent) as raised:
        open_registry(url, read_only=True)
    assert not raised.value.newer
    assert f"at revision 0007 and this fleetd needs {head_revision()}" in str(raised.value)
    assert "`fleetd db upgrade` as a user that can write it" in str(raised.value)
    assert stored_revision(url) == "0007", "nothing was migrated"


def test_a_registry_from_a_newer_fleetd_is_named_so(tmp_path: Path) -> None:
    url = make_registry(tmp_path / "fleetd.db")
    with sqlite3.connect(tmp_path / "fleetd.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaNotCurrent, match="newer than this fleetd knows") as raised:
        open_registry(url, read_only=True)
    assert raised.value.newer


def test_the_revision_of_a_missing_registry_is_read_without_creating_it(tmp_path: Path) -> None:
    assert stored_revision(f"sqlite:///{tmp_path / 'state' / 'fleetd.db'}") is None
    assert not (tmp_path / "state").exists()


PERMISSIONS_CHECK = """
import sys
from fleetd.registry.engine import Access, registry_access
from fleetd.registry.facade import open_registry_to_read
from fleetd.registry.migrating import head_revision, stored_revision

url = sys.argv[1]
assert registry_access(url) is Access.READ_ONLY, registry_access(url)
registry = open_registry_to_read(url)
try:
    assert registry.read_only
    assert registry.snapshot().replicas == ()
finally:
    registry.engine.dispose()
assert stored_revision(url) == head_revision()
print("read-only, read")
"""


def test_file_permissions_make_a_registry_read_only(read_only_dir: Path) -> None:
    """Run in a process for which file permissions apply (for root: through setpriv, without the capabilities
    that let root write any file)."""
    url = f"sqlite:///{read_only_dir / 'fleetd.db'}"
    before = listing(read_only_dir)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    checked = subprocess.run(
        unprivileged([sys.executable, "-c", PERMISSIONS_CHECK, url]),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (checked.returncode, checked.stdout) == (0, "read-only, read\n"), checked.stderr
    assert listing(read_only_dir) == before
