"""A SQLite registry deleted under a running ``fleetd serve`` (issue 15, item 3): never two leaders on one state dir.

The leader holds the registry's instance lock (``fleetd.lock``, beside ``fleetd.db``) with its lease. When the
registry's files are deleted under it, it stops leading, says so in one line and answers 503 on ``/readyz``; a
follower on the same state dir says the same; a new ``serve`` started on the state dir does not create a fresh
registry and lead too, but exits 1 with one line naming the holder of the lock. Deleting only ``fleetd.db``
(its ``-wal`` and ``-shm`` left behind) used to kill the new one with a "disk I/O error" traceback; with the
leader gone, the left-behind log is named in one line instead of being replayed into a new file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.support import wait_for
from tests.daemon.support import Served

DEADLINE_S = 60


def started(manifest: Path, state: Path, log: Path) -> Served:
    return Served(manifest, state, log, "--lease-ttl", "1500ms")


def says(served: Served, text: str) -> Callable[[], bool]:
    return lambda: text in served.output()


def serve_once(manifest: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``fleetd serve`` expected to refuse at once: its exit status and output (a hang fails the test)."""
    env = {**os.environ, "FLEETD_STATE_DIR": str(state)}
    env.pop("NOTIFY_SOCKET", None)
    argv = [sys.executable, "-m", "fleetd", "serve", str(manifest), "--http", "off", "--interval", "1s"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=DEADLINE_S, check=False)


@pytest.mark.parametrize("deleted", ["fleetd.db*", "fleetd.db"])
def test_a_deleted_registry_stops_the_leader_and_no_second_one_leads(tmp_path: Path, deleted: str) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    state = tmp_path / "state"
    leader = started(manifest, state, tmp_path / "leader.log")
    follower: Served | None = None
    try:
        wait_for(lambda: leader.metric("fleetd_leader") == 1, timeout_s=DEADLINE_S, what="a leader")
        follower = started(manifest, state, tmp_path / "follower.log")
        wait_for(lambda: (follower.get("/readyz") or (0,))[0] == 200, timeout_s=DEADLINE_S, what="a follower")
        assert follower.metric("fleetd_leader") == 0

        for path in state.glob(deleted):
            path.unlink()
        second = serve_once(manifest, state)
        assert second.returncode == 1, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"fleetd serve (pid {leader.process.pid} on" in lines[0], lines[0]
        assert f"{state / 'fleetd.db'} is missing" in lines[0], lines[0]

        said = f"the registry {state / 'fleetd.db'} was deleted under this controller"
        for served in (leader, follower):
            wait_for(says(served, said), timeout_s=DEADLINE_S, what=f"the lost line in {served.log}")
            assert (served.get("/readyz") or (0,))[0] == 503
            assert served.metric("fleetd_leader") == 0
            assert (served.status() or {})["registry_lost"] == f"the registry {state / 'fleetd.db'} was deleted"
            assert "Traceback" not in served.output()
        assert not (state / "fleetd.db").exists(), "a fresh registry was created silently"
        # the follower said who leads (pid) when it started
        assert f"not leading: fleetd serve (pid {leader.process.pid} on " in follower.output()
    finally:
        leader.stop()
        if follower is not None:
            follower.stop()


def test_a_write_ahead_log_left_from_a_deleted_registry_is_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    state = tmp_path / "state"
    leader = started(manifest, state, tmp_path / "leader.log")
    try:
        wait_for(lambda: leader.metric("fleetd_leader") == 1, timeout_s=DEADLINE_S, what="a leader")
        wait_for(lambda: (leader.status() or {}).get("cycles", 0) >= 1, timeout_s=DEADLINE_S, what="a cycle")
        (state / "fleetd.db").unlink()
        leader.process.kill()
        leader.process.wait(timeout=DEADLINE_S)
    finally:
        leader.stop()
    assert (state / "fleetd.db-wal").stat().st_size > 0
    second = serve_once(manifest, state)
    assert second.returncode == 1, second.stdout + second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"its write-ahead log {state / 'fleetd.db-wal'} is there" in lines[0], lines[0]
    assert not (state / "fleetd.db").exists()
