"""One worker process of ``test_concurrency``: random reserve, release and heartbeat calls against a registry.

Run in a process of its own (``multiprocessing`` with the ``spawn`` start method), it opens its own engine from
the URL, waits at a barrier so that every worker starts at once, and writes what it did as JSON to
``result_path`` (or the traceback, when it failed), for the test to add up against the ledger.
"""

from __future__ import annotations

import json
import random
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Barrier

from fleetd.registry import nodes, reservations
from fleetd.registry.engine import open_engine

GIB = 1024**3
TTL_MS = 3_600_000
"""Long enough that no reservation expires during a run: only releases end them."""


@dataclass
class WorkerReport:
    """What one worker did: every reserve attempt is either admitted or refused, every release succeeds."""

    worker: int
    reserves_admitted: int = 0
    reserves_refused: int = 0
    releases: int = 0
    releases_not_open: int = 0
    heartbeats: int = 0
    open_at_end: int = 0
    seconds: float = 0.0
    admitted_ops: list[str] = field(default_factory=list)
    error: str | None = None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def heartbeat_reading(rng: random.Random, total_vram: int) -> int:
    """A plausible free-VRAM reading: usually most of the card, sometimes little (a foreign process, or a
    replica that just finished loading), now and then less than what in-flight loads hold."""
    if rng.random() < 0.2:
        return rng.randint(0, total_vram // 4)
    return rng.randint(total_vram // 2, total_vram)


def run(
    url: str,
    worker: int,
    seed: int,
    operations: int,
    totals: Mapping[str, int],
    start: Barrier,
    result_path: str,
) -> None:
    """Do ``operations`` random calls, each in its own transaction, and write a ``WorkerReport``."""
    report = WorkerReport(worker)
    try:
        _run(url, worker, seed, operations, totals, start, report)
    except BaseException:
        report.error = traceback.format_exc()
    Path(result_path).write_text(json.dumps(asdict(report)))


def _run(
    url: str,
    worker: int,
    seed: int,
    operations: int,
    totals: Mapping[str, int],
    start: Barrier,
    report: WorkerReport,
) -> None:
    rng = random.Random(seed)
    names = sorted(totals)
    engine = open_engine(url, pool_size=1)
    open_ops: list[str] = []
    try:
        with engine.connect():
            pass  # connect before the barrier so the first operations really run at the same time
        start.wait()
        began = time.perf_counter()
        for _ in range(operations):
            roll = rng.random()
            if roll < 0.5 or (roll < 0.8 and not open_ops):
                node = rng.choice(names)
                size = rng.randint(1, 16) * GIB + rng.randint(0, GIB - 1)
                op_id = f"w{worker}:{uuid.UUID(int=rng.getrandbits(128)).hex}"
                with engine.begin() as conn:
                    held = reservations.reserve(conn, node, size, op_id, ttl_ms=TTL_MS, now_ms=now_ms())
                if held is None:
                    report.reserves_refused += 1
                else:
                    report.reserves_admitted += 1
                    report.admitted_ops.append(op_id)
                    open_ops.append(op_id)
            elif roll < 0.8:
                op_id = open_ops.pop(rng.randrange(len(open_ops)))
                with engine.begin() as conn:
                    released = reservations.release(conn, op_id, now_ms=now_ms())
                if released:
                    report.releases += 1
                else:
                    report.releases_not_open += 1
            else:
                # a batch of readings in random order, as a controller collecting agents' heartbeats sends it
                batch = rng.sample(names, rng.randint(1, len(names)))
                beats = [
                    nodes.Heartbeat(n, available_vram=heartbeat_reading(rng, totals[n]), available_ram=64 * GIB)
                    for n in batch
                ]
                with engine.begin() as conn:
                    nodes.heartbeat(conn, beats, now_ms=now_ms())
                report.heartbeats += 1
        report.seconds = time.perf_counter() - began
        report.open_at_end = len(open_ops)
    finally:
        engine.dispose()
