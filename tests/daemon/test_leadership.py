"""Several ``fleetd serve`` processes on one registry: one leads, and a follower takes over from a dead leader.

Both controllers share one registry (PostgreSQL, and SQLite for the single-host setup) and one state dir, as two
units on one machine would: the follower neither runs cycles nor supervises the replicas; when the leader is
SIGKILLed its lease expires, the follower takes it (a new epoch) and adopts the running replica instead of
starting another. A registry write carrying the dead leader's epoch is then rejected and lands nothing.

The executor's side of fencing (a deposed leader's apply runs nothing, one deposed mid-apply finishes nothing
more) is in ``tests/executing/test_apply.py``; ``tests/daemon/test_reconciler.py`` shows a cycle under a stale
fence changes nothing.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from fleetd.executing import Fence
from fleetd.executing.writes import Writes
from fleetd.registry import pending_ops
from fleetd.registry.facade import open_registry
from fleetd.registry.leases import FencedOut
from tests.agent.support import kill_all, wait_for
from tests.conftest import Database
from tests.daemon.support import Served, fake_llama_executable, instance, manifest_text

TTL_S = 3.0


def leader_of(pair: list[Served]) -> tuple[Served, Served] | None:
    """(leader, follower) once exactly one says it leads and the other says it does not."""
    gauges = [s.metric("fleetd_leader") for s in pair]
    if sorted(g for g in gauges if g is not None) != [0.0, 1.0]:
        return None
    return (pair[0], pair[1]) if gauges[0] == 1.0 else (pair[1], pair[0])


def test_one_leader_and_a_takeover_within_the_lease_ttl(tmp_path: Path, database: Database) -> None:
    token = f"lead-{uuid.uuid4().hex[:10]}"
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(manifest_text(executable, instance("alpha", token, models=tmp_path / "models")))
    state = tmp_path / "state"
    extra = ("--database-url", database.url, "--lease-ttl", f"{TTL_S:g}s")
    first = Served(manifest, state, tmp_path / "first.log", *extra)
    wait_for(lambda: first.metric("fleetd_leader") == 1, timeout_s=20, what="the first to lead\n" + first.output())
    second = Served(manifest, state, tmp_path / "second.log", *extra)
    pair = [first, second]
    try:
        leader, follower = wait_for(lambda: leader_of(pair), timeout_s=20, what="exactly one leader")
        running = wait_for(lambda: leader.replicas().get("alpha"), timeout_s=20, what="alpha running")
        deposed = leader.status() or {}
        assert follower.replicas() == {}
        # the follower supervises nothing, but its metrics show the fleet as the leader recorded it
        wait_for(lambda: follower.metric('fleetd_replicas{state="running"}') == 1, timeout_s=10, what="metrics")
        assert (follower.status() or {})["cycles"] == 0
        assert (follower.get("/readyz") or (0,))[0] == 200

        leader.process.kill()
        leader.process.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: follower.metric("fleetd_leader") == 1, timeout_s=TTL_S * 3, what="takeover")
        took_s = time.monotonic() - killed
        # the lease expires at most TTL after the last renewal; the follower retries every TTL/3
        assert took_s <= TTL_S * 4 / 3 + 1.0, took_s
        status = follower.status() or {}
        assert status["leader"] is True and status["epoch"] >= 2
        adopted = wait_for(lambda: follower.replicas().get("alpha"), timeout_s=20, what="alpha adopted")
        assert adopted["pid"] == running["pid"], "the new leader started another process instead of adopting"
        assert "leading (lease controller, epoch" in follower.output()

        registry = open_registry(database.url, migrate=False)
        try:
            stale = Writes(registry, Fence("controller", deposed["holder"], deposed["epoch"]))
            with pytest.raises(FencedOut, match="stale"):
                stale.record_intent("local", "alpha/0", "unload", {"reason": "from the deposed leader"})
            with registry.engine.connect() as conn:
                landed = pending_ops.list_ops(conn)
            assert not any(op.payload.get("reason") == "from the deposed leader" for op in landed)
        finally:
            registry.engine.dispose()

        follower.signal(signal.SIGTERM)
        assert follower.process.wait(timeout=30) == 0, follower.output()
    finally:
        for served in pair:
            served.stop()
        kill_all(token)
