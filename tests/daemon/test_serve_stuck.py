"""``fleetd serve`` neither hangs on a manifest that blocks nor says healthy while its cycle is stuck, and
SIGTERM always ends it within its stop timeout (issue 15, item 4).

A FIFO as the manifest used to hang the daemon before it served anything (a FIFO's ``open`` waits for a
writer), and SIGTERM then did not stop it cleanly. A cycle that blocks is made real here by another process
holding the SQLite registry's write lock: every cycle writes the local node's heartbeat, so it waits on the
lock (up to SQLite's busy timeout) without progress. ``/healthz`` and ``/readyz`` used to say 200 for as long as
the worker thread existed; now they answer 503 once the cycle has gone ``--stuck-after`` without progress, and
SIGTERM ends the process after ``--stop-timeout`` with status 1 and one line saying the cycle did not finish.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.agent.support import wait_for
from tests.daemon.support import Served

DEADLINE_S = 60
STOP_TIMEOUT_S = 2.0


def http_status(served: Served, path: str) -> int:
    got = served.get(path)
    return got[0] if got is not None else 0


def test_a_fifo_manifest_does_not_hang_serve_and_sigterm_ends_it(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    os.mkfifo(manifest)
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log")
    try:
        wait_for(lambda: http_status(served, "/healthz") == 200, timeout_s=DEADLINE_S, what="/healthz answering")
        said = f"{manifest} is not a regular file (a FIFO)"
        wait_for(lambda: said in served.output(), timeout_s=DEADLINE_S, what=f"the FIFO named in {served.log}")
        served.signal(signal.SIGTERM)
        assert served.process.wait(timeout=DEADLINE_S) == 0, served.output()
        assert "Traceback" not in served.output()
    finally:
        served.stop()


def test_a_stuck_cycle_is_not_healthy_and_sigterm_ends_serve_in_its_stop_timeout(tmp_path: Path) -> None:
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text("version: 1\n")
    state = tmp_path / "state"
    bounds = ("--stuck-after", "1s", "--stop-timeout", f"{STOP_TIMEOUT_S:g}s")
    served = Served(manifest, state, tmp_path / "serve.log", *bounds)
    holder: sqlite3.Connection | None = None
    try:
        wait_for(lambda: (served.status() or {}).get("cycles", 0) >= 1, timeout_s=DEADLINE_S, what="a first cycle")
        assert http_status(served, "/healthz") == 200
        holder = sqlite3.connect(state / "fleetd.db", isolation_level=None, timeout=DEADLINE_S)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the registry's write lock
        wait_for(lambda: http_status(served, "/healthz") == 503, timeout_s=DEADLINE_S, what="/healthz saying 503")
        assert http_status(served, "/readyz") == 503
        assert ((served.status() or {}).get("cycle_stuck_s") or 0) >= 1
        assert "the reconcile cycle has made no progress for" in served.output()

        served.signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            code = served.process.wait(timeout=STOP_TIMEOUT_S + 20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM did not end serve:\n{served.output()}") from None
        assert code == 1, served.output()
        assert time.monotonic() - signalled < STOP_TIMEOUT_S + 20
        lines = [line for line in served.output().splitlines() if "event=stop_timeout" in line]
        assert len(lines) == 1 and f"did not finish within {STOP_TIMEOUT_S:g} s" in lines[0], served.output()
        assert "Traceback" not in served.output()
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
        served.stop()
