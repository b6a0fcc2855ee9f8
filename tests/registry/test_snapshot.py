"""``snapshot``: what the planner sees, in a fixed number of queries, and a fingerprint of its structure only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event

from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import iso_from_ms
from fleetd.registry import nodes, replicas, scheduling
from fleetd.registry.engine import read_only
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.registry.replicas import ReplicaRecord
from fleetd.registry.snapshots import snapshot
from fleetd.registry.tables import scheduling_state
from tests.conftest import ManualClock

GIB = 1024**3
FACTS = NodeFacts(gpu_vendor="nvidia", total_vram=24 * GIB, available_vram=20 * GIB, total_ram=64 * GIB)


def set_scheduling(conn: Connection, instance: str, ticks: int, until_ms: int | None, now_ms: int) -> None:
    """Nothing in the registry writes these yet but the scheduler; the table is written as it will."""
    conn.execute(
        scheduling_state.insert().values(
            instance=instance, unsatisfiable_ticks=ticks, cooldown_until_ms=until_ms, updated_ms=now_ms
        )
    )


def test_snapshot_shows_nodes_replicas_and_scheduling_records(engine: Engine, clock: ManualClock) -> None:
    now = clock()
    with engine.begin() as conn:
        nodes.register(conn, "gpu-b", FACTS, now_ms=now, max_replicas_per_model=2)
        nodes.register(conn, "gpu-a", NodeFacts(total_ram=32 * GIB, available_ram=30 * GIB), now_ms=now)
        nodes.approve(conn, "gpu-b", now_ms=now)
        nodes.set_manifest_labels(conn, "gpu-b", {"zone": "eu-1", "a-tier": "gold"})
        nodes.set_backend_state(conn, "gpu-b", "vllm", "installed", now_ms=now, version="0.11")
        nodes.set_backend_state(conn, "gpu-b", "llama", "installed", now_ms=now)
        nodes.set_backend_state(conn, "gpu-b", "mlx", "failed", now_ms=now, error="not on linux")
        nodes.set_backend_state(conn, "gpu-a", "llama", "installing", now_ms=now)
        replicas.upsert(
            conn,
            ReplicaRecord(
                "chat",
                "gpu-b",
                1,
                ReplicaState.RUNNING,
                address="10.0.0.2:41001",
                pid=4242,
                config_hash="sha256:c1",
                vram_bytes=6 * GIB,
                restarts=2,
                in_flight=3,
                last_used_ms=now + 1_500,
            ),
            now_ms=now,
        )
        replicas.upsert(
            conn,
            ReplicaRecord("chat", "gpu-b", 0, ReplicaState.FAILED, last_error="exit 1", config_hash="sha256:c1"),
            now_ms=now,
        )
        replicas.upsert(conn, ReplicaRecord("a-embed", "gpu-a", 0, ReplicaState.STARTING), now_ms=now)
        set_scheduling(conn, "code", 3, now + 60_000, now)
        set_scheduling(conn, "big", 1, None, now)
    registry = Registry(engine, clock)
    registry.reserve("gpu-b", 5 * GIB, "load:chat:gpu-b:2", ttl_ms=60_000)

    observed = registry.snapshot()

    assert observed.nodes == (
        ObservedNode(
            name="gpu-a",
            status=NodeStatus.PENDING,
            labels=(
                ("gpu.vendor", "none"),
                ("gpu.vram", "0GiB"),
                ("node.name", "gpu-a"),
                ("node.replica-slots", "1"),
            ),
            total_ram=32 * GIB,
            available_ram=30 * GIB,
        ),
        ObservedNode(
            name="gpu-b",
            status=NodeStatus.HEALTHY,
            labels=(
                ("a-tier", "gold"),
                ("gpu.vendor", "nvidia"),
                ("gpu.vram", "24GiB"),
                ("node.name", "gpu-b"),
                ("node.replica-slots", "2"),
                ("zone", "eu-1"),
            ),
            gpu_vendor="nvidia",
            total_vram=24 * GIB,
            available_vram=20 * GIB,
            reserved_vram=5 * GIB,
            total_ram=64 * GIB,
            max_replicas_per_model=2,
            backends=("llama", "vllm"),
            approved=True,
        ),
    )
    since = iso_from_ms(now)  # every row was written (its state set) at ``now``
    assert observed.replicas == (
        ObservedReplica("a-embed", "gpu-a", 0, ReplicaState.STARTING, state_since=since),
        ObservedReplica(
            "chat",
            "gpu-b",
            0,
            ReplicaState.FAILED,
            config_hash="sha256:c1",
            last_error="exit 1",
            state_since=since,
        ),
        ObservedReplica(
            "chat",
            "gpu-b",
            1,
            ReplicaState.RUNNING,
            address="10.0.0.2:41001",
            config_hash="sha256:c1",
            vram_bytes=6 * GIB,
            in_flight=3,
            last_used="2026-11-23T08:00:01.500Z",
            restarts=2,
            state_since=since,
        ),
    )
    assert observed.replicas[2].last_used == iso_from_ms(now + 1_500)
    assert observed.scheduling == (
        SchedulingRecord("big", 1, None),
        SchedulingRecord("code", 3, "2026-11-23T08:01:00Z"),
    )
    assert observed.node("gpu-b") is observed.nodes[1]
    assert observed.nodes[1].free_vram == 15 * GIB


def test_an_empty_registry_is_an_empty_state(engine: Engine) -> None:
    with read_only(engine) as conn:
        assert snapshot(conn) == ObservedState()


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def add_nodes(engine: Engine, clock: ManualClock, start: int, stop: int) -> None:
    """Nodes ``start`` to ``stop - 1``, each with labels, a backend, two replicas and a scheduling record."""
    with engine.begin() as conn:
        for i in range(start, stop):
            name = f"gpu-{i:03d}"
            nodes.register(conn, name, FACTS, now_ms=clock())
            nodes.set_manifest_labels(conn, name, {"zone": f"z{i % 3}"})
            nodes.set_backend_state(conn, name, "llama", "installed", now_ms=clock())
            for index in range(2):
                replicas.upsert(
                    conn, ReplicaRecord(f"m{i % 7}", name, index, ReplicaState.RUNNING), now_ms=clock()
                )
            set_scheduling(conn, f"m{i}", i, None, clock())


def snapshot_statements(engine: Engine) -> tuple[ObservedState, list[str]]:
    with counting_statements(engine) as statements, read_only(engine) as conn:
        observed = snapshot(conn)
    return observed, statements


def test_snapshot_issues_the_same_few_queries_whatever_the_size(engine: Engine, clock: ManualClock) -> None:
    add_nodes(engine, clock, 0, 10)
    small, small_statements = snapshot_statements(engine)
    add_nodes(engine, clock, 10, 200)
    large, large_statements = snapshot_statements(engine)
    assert (len(small.nodes), len(small.replicas), len(small.scheduling)) == (10, 20, 10)
    assert (len(large.nodes), len(large.replicas), len(large.scheduling)) == (200, 400, 200)
    assert len(small_statements) == len(large_statements)
    kinds = [s.lstrip().split()[0].upper() for s in large_statements]
    assert kinds.count("SELECT") == 6  # nodes, labels, backends, replicas, tombstones, scheduling


def test_fingerprint_follows_structure_not_live_readings(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    running = ReplicaRecord("chat", "gpu-a", 0, ReplicaState.RUNNING, address="10.0.0.1:41000", config_hash="h1")
    registry.upsert_replica(running)
    seen = [registry.snapshot().fingerprint]

    def unchanged() -> None:
        assert registry.snapshot().fingerprint == seen[-1]

    def changed() -> None:
        fingerprint = registry.snapshot().fingerprint
        assert fingerprint not in seen
        seen.append(fingerprint)

    # live readings: the plan made on them is still valid
    clock.advance(10_000)
    registry.heartbeat([Heartbeat("gpu-a", available_vram=3 * GIB, available_ram=GIB)])
    unchanged()
    registry.reserve("gpu-a", 2 * GIB, "load:chat:gpu-a:1", ttl_ms=60_000)
    unchanged()
    registry.release("load:chat:gpu-a:1")
    unchanged()
    registry.upsert_replica(
        ReplicaRecord(
            "chat",
            "gpu-a",
            0,
            ReplicaState.RUNNING,
            address="10.0.0.1:41000",
            config_hash="h1",
            in_flight=7,
            last_used_ms=clock(),
            restarts=1,
            vram_bytes=5 * GIB,
            last_error="oom once",
        )
    )
    unchanged()

    # structure: a plan made before is stale
    registry.set_labels("gpu-a", {"zone": "eu-1"})
    changed()
    registry.upsert_replica(
        ReplicaRecord("chat", "gpu-a", 0, ReplicaState.RUNNING, address="10.0.0.1:41000", config_hash="h2")
    )
    changed()
    registry.upsert_replica(
        ReplicaRecord("chat", "gpu-a", 0, ReplicaState.UNHEALTHY, address="10.0.0.1:41000", config_hash="h2")
    )
    changed()
    registry.register_node("gpu-b", FACTS)
    changed()
    registry.approve_node("gpu-b")
    changed()
    registry.set_draining("gpu-b", True)
    changed()
    with engine.begin() as conn:
        nodes.set_backend_state(conn, "gpu-b", "llama", "installed", now_ms=clock())
    changed()
    with engine.begin() as conn:
        set_scheduling(conn, "chat", 1, None, clock())
    changed()


def test_a_cached_snapshot_is_what_a_fresh_one_reads(engine: Engine, clock: ManualClock) -> None:
    """``Registry.snapshot`` reuses the values of unchanged rows (``SnapshotCache``): each change, structural or
    a live reading, shows as a snapshot without the cache reads it; with no change, the same value returns."""
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    registry.upsert_replica(ReplicaRecord("chat", "gpu-a", 0, ReplicaState.RUNNING, config_hash="h1"))
    registry.upsert_replica(ReplicaRecord("chat", "gpu-a", 1, ReplicaState.RUNNING, config_hash="h1"))
    last = registry.snapshot()

    def fresh() -> ObservedState:
        with read_only(engine) as conn:
            return snapshot(conn)

    def check(changed: bool) -> None:
        nonlocal last
        cached, expected = registry.snapshot(), fresh()
        assert (cached.nodes, cached.replicas, cached.scheduling) == (
            expected.nodes,
            expected.replicas,
            expected.scheduling,
        )
        assert cached.fingerprint == expected.fingerprint
        assert (cached is last) is not changed
        last = cached

    check(changed=False)
    clock.advance(1_000)
    registry.heartbeat([Heartbeat("gpu-a", available_vram=3 * GIB, available_ram=GIB)])
    check(changed=True)
    registry.upsert_replica(
        ReplicaRecord(
            "chat", "gpu-a", 1, ReplicaState.RUNNING, config_hash="h1", in_flight=2, last_used_ms=clock()
        )
    )
    check(changed=True)
    fingerprint = last.fingerprint
    registry.upsert_replica(ReplicaRecord("chat", "gpu-a", 1, ReplicaState.FAILED, config_hash="h1"))
    check(changed=True)
    assert last.fingerprint != fingerprint
    registry.set_labels("gpu-a", {"zone": "eu-1"})
    check(changed=True)
    with engine.begin() as conn:
        nodes.set_backend_state(conn, "gpu-a", "llama", "installed", now_ms=clock())
        set_scheduling(conn, "chat", 1, None, clock())
    check(changed=True)
    with engine.begin() as conn:
        replicas.remove(conn, "chat", "gpu-a", 0)
    check(changed=True)
    check(changed=False)


def test_saved_rejection_reasons_come_back_with_the_record(engine: Engine, clock: ManualClock) -> None:
    """What stood in the way of a placement outlives the cycle, so a plan made in the cooldown can say it."""
    record = SchedulingRecord(
        "big", 3, iso_from_ms(clock() + 60_000), "sha256:c", (("insufficient_vram", 2), ("replica_slots", 1))
    )
    with engine.begin() as conn:
        scheduling.save(conn, [record, SchedulingRecord("small", 1)], now_ms=clock())
    with engine.connect() as conn:
        assert snapshot(conn).scheduling == (record, SchedulingRecord("small", 1))
