"""``fleetd db upgrade`` and ``fleetd db current`` on both databases, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Database


def fleetd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_upgrade_then_current(empty_database: Database) -> None:
    before = fleetd("db", "current", "--database-url", empty_database.url)
    assert before.returncode == 1
    assert before.stdout.startswith("current empty, head ")
    first = fleetd("db", "upgrade", "--database-url", empty_database.url)
    assert first.returncode == 0, first.stderr
    assert "upgraded from empty to 0009" in first.stdout
    second = fleetd("db", "upgrade", "--database-url", empty_database.url)
    assert second.returncode == 0
    assert "is up to date (revision 0009)" in second.stdout
    after = fleetd("db", "current", "--database-url", empty_database.url)
    assert (after.returncode, after.stdout) == (0, "current 0009, head 0009\n")


def test_default_registry_is_sqlite_under_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = fleetd("db", "upgrade", env={"FLEETD_STATE_DIR": str(state)})
    assert result.returncode == 0, result.stderr
    assert (state / "fleetd.db").is_file()
    assert f"sqlite:///{state / 'fleetd.db'}" in result.stdout


def test_password_is_not_printed(tmp_path: Path) -> None:
    url = "postgresql+psycopg://fleetd:hunter2@127.0.0.1:1/fleetd?connect_timeout=1"
    result = fleetd("db", "upgrade", "--database-url", url)
    assert result.returncode == 1  # nothing listens on port 1
    assert result.stderr.startswith("error: registry at postgresql+psycopg://fleetd:***@127.0.0.1:1/fleetd")
    assert "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_a_url_is_printed_as_given_unless_it_has_a_password() -> None:
    from fleetd.cli.common import redact_url

    assert (
        redact_url("postgresql+psycopg://fleetd:hunter2@db/fleetd") == "postgresql+psycopg://fleetd:***@db/fleetd"
    )
    assert redact_url("sqlite:///file:/var/lib/fleetd/fleetd.db?mode=ro&uri=true") == (
        "sqlite:///file:/var/lib/fleetd/fleetd.db?mode=ro&uri=true"
    )
