"""The SQLite registry's instance lock and file identity (``fleetd.registry.instance_lock``), on real files.

Two ``InstanceLock`` objects open the lock file separately, so their ``flock`` locks conflict as two processes'
would. The engine creates the registry file once and never again: a file deleted under it stays deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fleetd.registry.engine import open_engine
from fleetd.registry.facade import open_registry
from fleetd.registry.instance_lock import InstanceLock, RegistryFileError, lock_path_of


def test_the_lock_file_is_beside_the_registry_and_not_matched_by_its_glob(tmp_path: Path) -> None:
    assert lock_path_of(tmp_path / "fleetd.db") == tmp_path / "fleetd.lock"
    assert lock_path_of(tmp_path / "registry") == tmp_path / "registry.lock"
    assert lock_path_of(tmp_path / "x.lock") == tmp_path / "x.lock.lock"


def test_one_holder_at_a_time_and_the_others_read_its_name(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'fleetd.db'}")
    try:
        first, second = InstanceLock(tmp_path / "fleetd.db"), InstanceLock(tmp_path / "fleetd.db")
        assert first.take("serve:host-a:1234")
        assert first.take("serve:host-a:1234")  # already held: still ours
        assert not second.take("apply:host-a:99")
        assert second.holder() == "serve:host-a:1234"
        assert first.holder() is None  # not "someone else"
        first.release()
        assert second.holder() is None
        assert second.take("apply:host-a:99")
        second.release()
        assert registry.instance_lock is not None and registry.instance_lock.path == tmp_path / "fleetd.lock"
    finally:
        registry.engine.dispose()


def test_a_deleted_or_replaced_file_is_lost(tmp_path: Path) -> None:
    database = tmp_path / "fleetd.db"
    open_engine(f"sqlite:///{database}").dispose()
    lock = InstanceLock(database)
    assert lock.lost() is None
    assert lock.take("serve:h:1")
    lock.path.unlink()
    assert lock.lost() == f"the registry's instance lock {lock.path} was deleted or replaced"
    lock.release()
    assert lock.lost() is None  # the lock file matters only while it is held
    moved = tmp_path / "moved.db"
    database.rename(moved)
    assert lock.lost() == f"the registry {database} was deleted"
    database.write_bytes(b"")
    assert lock.lost() == f"the registry {database} was replaced by another file"


def test_a_deleted_registry_is_never_created_again_by_a_connection(tmp_path: Path) -> None:
    database = tmp_path / "fleetd.db"
    engine = open_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()  # the next connection opens the file again
        database.unlink()
        with pytest.raises(OperationalError, match="unable to open database file"), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert not database.exists()
    finally:
        engine.dispose()


def test_no_registry_is_created_while_another_holds_its_lock(tmp_path: Path) -> None:
    database = tmp_path / "fleetd.db"
    holder = InstanceLock(database)
    assert holder.take("serve:host-a:4242")
    try:
        with pytest.raises(RegistryFileError) as refused:
            open_registry(f"sqlite:///{database}")
        assert str(refused.value).startswith(
            f"the registry {database} is missing while fleetd serve (pid 4242 on host-a) holds its instance lock"
        )
        assert not database.exists()
    finally:
        holder.release()
    open_registry(f"sqlite:///{database}").engine.dispose()  # free again: made as usual
    assert database.exists()


def test_a_write_ahead_log_without_its_database_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "fleetd.db"
    (tmp_path / "fleetd.db-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 28)
    with pytest.raises(RegistryFileError, match=r"its write-ahead log .*fleetd\.db-wal is there"):
        open_engine(f"sqlite:///{database}")
    assert not database.exists()
