"""Several processes reserving, releasing and heartbeating one registry at once never over-commit a node.

8 real processes (``spawn``) × 500 random operations against one database, on SQLite (one file, WAL) and on
PostgreSQL. Heartbeats set any plausible free-VRAM reading, including less than what is reserved, so "no
over-commit" is checked where it is decided: every admission's ledger row records the free VRAM it was
admitted against and the node's reserved total after it. Figures per run are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from sqlalchemy import Engine, func, select

from fleetd.registry import nodes, reservations
from fleetd.registry.tables import nodes as nodes_table
from fleetd.registry.tables import vram_reservations
from tests.conftest import Database, ManualClock
from tests.registry import concurrency_worker

GIB = 1024**3
WORKERS = 8
OPERATIONS = 500
DEADLINE_S = 240
"""For the whole run; a worker that does not finish by then fails the test (nothing waits on sleeps)."""
START_TIMEOUT_S = 60
"""For every worker to reach the start barrier; a worker that died on the way breaks it for the others."""
TOTALS = {"gpu-a": 24 * GIB, "gpu-b": 48 * GIB, "gpu-c": 80 * GIB, "gpu-d": 80 * GIB}


def _register(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        for name, total in TOTALS.items():
            facts = nodes.NodeFacts(gpu_vendor="nvidia", total_vram=total, available_vram=total)
            nodes.register(conn, name, facts, now_ms=clock())
            nodes.approve(conn, name, now_ms=clock())


def _run_workers(database: Database, tmp_path: Path) -> tuple[list[concurrency_worker.WorkerReport], float]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS, timeout=START_TIMEOUT_S)
    paths = [tmp_path / f"worker-{i}.json" for i in range(WORKERS)]
    processes = [
        ctx.Process(
            target=concurrency_worker.run,
            args=(database.url, i, 7919 * (i + 1), OPERATIONS, TOTALS, start, str(paths[i])),
            name=f"registry-worker-{i}",
        )
        for i in range(WORKERS)
    ]
    began = time.monotonic()
    for process in processes:
        process.start()
    deadline = began + DEADLINE_S
    try:
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [p.name for p in processes if p.is_alive()]
        assert not stuck, f"workers still running after {DEADLINE_S} s: {stuck}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
    elapsed = time.monotonic() - began
    assert [p.exitcode for p in processes] == [0] * WORKERS
    reports = [concurrency_worker.WorkerReport(**json.loads(path.read_text())) for path in paths]
    errors = [r.error for r in reports if r.error]
    assert not errors, "\n".join(errors)
    return reports, elapsed


def test_no_over_commit_under_concurrent_reserve_release_heartbeat(
    database: Database, engine: Engine, clock: ManualClock, tmp_path: Path
) -> None:
    _register(engine, clock)

    reports, elapsed = _run_workers(database, tmp_path)

    admitted = sum(r.reserves_admitted for r in reports)
    refused = sum(r.reserves_refused for r in reports)
    released = sum(r.releases for r in reports)
    heartbeats = sum(r.heartbeats for r in reports)
    print(
        f"\n{database.dialect}: {WORKERS} workers x {OPERATIONS} ops in {elapsed:.1f} s "
        f"(slowest worker {max(r.seconds for r in reports):.1f} s): {admitted} reserves admitted, "
        f"{refused} refused, {released} releases, {heartbeats} heartbeats"
    )
    not_open = sum(r.releases_not_open for r in reports)
    assert admitted + refused + released + not_open + heartbeats == WORKERS * OPERATIONS
    assert not_open == 0  # each worker releases only its own open ops, so every release finds one
    assert refused > 0, "the nodes never filled up: the run did not test admission at the limit"

    with engine.connect() as conn:
        ledger = conn.execute(
            select(
                vram_reservations.c.op_id,
                vram_reservations.c.node,
                vram_reservations.c.released_ms,
                vram_reservations.c.available_at_reserve,
                vram_reservations.c.reserved_after,
            )
        ).all()
        reserved = dict(conn.execute(select(nodes_table.c.name, nodes_table.c.reserved_vram)).all())
        open_by_node = reservations.open_reserved_by_node(conn)
        released_rows = conn.execute(
            select(func.count()).select_from(vram_reservations).where(vram_reservations.c.released_ms.is_not(None))
        ).scalar_one()

    over_committed = [row for row in ledger if row.reserved_after > row.available_at_reserve]
    assert over_committed == []
    assert len(ledger) == admitted
    assert {row.op_id for row in ledger} == {op for r in reports for op in r.admitted_ops}
    assert released_rows == released
    assert len(ledger) - released_rows == sum(r.open_at_end for r in reports)
    assert all(value >= 0 for value in reserved.values())
    assert reserved == {name: open_by_node.get(name, 0) for name in TOTALS}
    assert sum(open_by_node.values()) > 0  # the final accounting is checked on something, not on zeros
