"""The state dir fleetd makes is private (0700) and so is the SQLite registry in it (0600, its ``-wal`` and
``-shm`` following the file's mode); a state dir the operator made keeps its mode."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def _fleetd(root: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLEETD_DATABASE_URL"}
    env["FLEETD_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args],
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> object:
    """The usual umask, so the modes below are fleetd's and not a restrictive test environment's."""
    old = os.umask(0o022)
    yield None
    os.umask(old)


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("command", [("apply", "--auto-approve"), ("status",)])
def test_a_fresh_state_dir_is_0700_and_the_registry_0600(tmp_path: Path, command: tuple[str, ...]) -> None:
    (tmp_path / "fleet.yaml").write_text("version: 1\ninstances: {}\n")
    state = tmp_path / "new" / "state"
    result = _fleetd(tmp_path, state, *command)
    assert result.returncode == 0, result.stderr
    assert _mode(state) == 0o700
    database = state / "fleetd.db"
    assert _mode(database) == 0o600
    with sqlite3.connect(database) as connection:  # a WAL reader: SQLite makes -wal and -shm like the file
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        for suffix in ("-wal", "-shm"):
            assert _mode(Path(f"{database}{suffix}")) == 0o600
    connection.close()


@pytest.mark.usefixtures("umask_022")
def test_a_state_dir_the_operator_made_keeps_its_mode(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    state.chmod(0o750)
    (tmp_path / "fleet.yaml").write_text("version: 1\ninstances: {}\n")
    result = _fleetd(tmp_path, state, "status")
    assert result.returncode == 0, result.stderr
    assert _mode(state) == 0o750
    assert _mode(state / "fleetd.db") == 0o600
