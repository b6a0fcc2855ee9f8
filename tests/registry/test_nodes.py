"""Node lifecycle: registration, approval, heartbeats and missed ones, draining, labels, backends, removal."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, Engine, func, select, update

from fleetd.core.observed import NodeStatus, ReplicaState
from fleetd.registry import nodes, replicas, reservations
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts, UnknownNode
from fleetd.registry.tables import node_backends, node_labels, vram_reservations
from fleetd.registry.tables import nodes as nodes_table
from fleetd.registry.tables import replicas as replicas_table
from tests.conftest import ManualClock

GIB = 1024**3
UNHEALTHY_AFTER_MS = 15_000
OFFLINE_AFTER_MS = 60_000
FACTS = NodeFacts(gpu_vendor="nvidia", total_vram=80 * GIB, available_vram=78 * GIB, total_ram=256 * GIB)


def status_of(engine: Engine, name: str) -> NodeStatus:
    with engine.connect() as conn:
        return NodeStatus(
            conn.execute(select(nodes_table.c.status).where(nodes_table.c.name == name)).scalar_one()
        )


def labels_of(engine: Engine, name: str) -> dict[str, tuple[str, str]]:
    """Key -> (value, source)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(node_labels.c.key, node_labels.c.value, node_labels.c.source).where(node_labels.c.node == name)
        )
        return {key: (value, source) for key, value, source in rows}


def labels_of_conn(conn: Connection, name: str) -> dict[str, str]:
    rows = conn.execute(select(node_labels.c.key, node_labels.c.value).where(node_labels.c.node == name))
    return dict(rows.all())


def mark(registry: Registry) -> tuple[int, int]:
    return registry.mark_missed_heartbeats(
        unhealthy_after_ms=UNHEALTHY_AFTER_MS, offline_after_ms=OFFLINE_AFTER_MS
    )


def test_new_node_is_pending_until_approved(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    assert registry.register_node("gpu-a", FACTS) is NodeStatus.PENDING
    registry.heartbeat([Heartbeat("gpu-a", available_vram=70 * GIB, available_ram=0)])
    assert status_of(engine, "gpu-a") is NodeStatus.PENDING  # heartbeats do not approve
    registry.approve_node("gpu-a")
    assert status_of(engine, "gpu-a") is NodeStatus.HEALTHY
    with pytest.raises(UnknownNode):
        registry.approve_node("gpu-nope")


def test_re_registering_keeps_approval_status_and_token_and_refreshes_facts(
    engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS, token_hash="sha256:abc", address="10.0.0.1:7070")
    registry.approve_node("gpu-a")
    clock.advance(1_000)
    bigger = NodeFacts(gpu_vendor="nvidia", total_vram=96 * GIB, available_vram=90 * GIB, total_ram=512 * GIB)
    assert registry.register_node("gpu-a", bigger, address="10.0.0.2:7070") is NodeStatus.HEALTHY
    with engine.connect() as conn:
        row = conn.execute(select(nodes_table).where(nodes_table.c.name == "gpu-a")).one()
    assert row.approved is True
    assert (row.token_hash, row.address) == ("sha256:abc", "10.0.0.2:7070")
    assert (row.total_vram, row.available_vram, row.total_ram) == (96 * GIB, 90 * GIB, 512 * GIB)
    assert row.registered_ms == clock() - 1_000
    assert (row.last_heartbeat_ms, row.updated_ms) == (clock(), clock())
    assert labels_of(engine, "gpu-a")["gpu.vram"] == ("96GiB", "auto")


def test_missed_heartbeats_make_a_node_unhealthy_then_offline(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    clock.advance(UNHEALTHY_AFTER_MS)
    assert mark(registry) == (0, 0)  # silent for exactly the threshold is not yet a miss
    clock.advance(1)
    assert mark(registry) == (1, 0)
    assert status_of(engine, "gpu-a") is NodeStatus.UNHEALTHY
    assert mark(registry) == (0, 0)  # counted once
    clock.advance(OFFLINE_AFTER_MS - UNHEALTHY_AFTER_MS)
    assert mark(registry) == (0, 1)
    assert status_of(engine, "gpu-a") is NodeStatus.OFFLINE
    assert mark(registry) == (0, 0)


def test_a_healthy_node_silent_past_the_offline_threshold_goes_straight_offline(
    engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    for name in ("gpu-a", "gpu-b"):
        registry.register_node(name, FACTS)
        registry.approve_node(name)
    clock.advance(OFFLINE_AFTER_MS - 1)
    registry.heartbeat([Heartbeat("gpu-b", available_vram=GIB, available_ram=GIB)])
    clock.advance(2)
    assert mark(registry) == (0, 1)
    assert (status_of(engine, "gpu-a"), status_of(engine, "gpu-b")) == (NodeStatus.OFFLINE, NodeStatus.HEALTHY)


def test_one_heartbeat_brings_an_approved_node_back(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    for name in ("gpu-a", "gpu-b"):
        registry.register_node(name, FACTS)
        registry.approve_node(name)
    clock.advance(UNHEALTHY_AFTER_MS + 1)
    mark(registry)
    registry.heartbeat([Heartbeat("gpu-a", available_vram=GIB, available_ram=GIB)])
    assert status_of(engine, "gpu-a") is NodeStatus.HEALTHY
    clock.advance(OFFLINE_AFTER_MS)
    mark(registry)
    assert status_of(engine, "gpu-b") is NodeStatus.OFFLINE
    registry.heartbeat([Heartbeat("gpu-b", available_vram=GIB, available_ram=GIB)])
    assert status_of(engine, "gpu-b") is NodeStatus.HEALTHY


def test_heartbeats_do_not_revive_an_unapproved_node(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    clock.advance(OFFLINE_AFTER_MS + 1)
    mark(registry)
    with engine.begin() as conn:  # a person revoked the approval while the node was away
        conn.execute(update(nodes_table).where(nodes_table.c.name == "gpu-a").values(approved=False))
    registry.heartbeat([Heartbeat("gpu-a", available_vram=GIB, available_ram=GIB)])
    assert status_of(engine, "gpu-a") is NodeStatus.OFFLINE


def test_draining_survives_heartbeats_and_missed_heartbeat_checks(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    registry.set_draining("gpu-a", True)
    assert status_of(engine, "gpu-a") is NodeStatus.DRAINING
    registry.heartbeat([Heartbeat("gpu-a", available_vram=GIB, available_ram=GIB)])
    clock.advance(UNHEALTHY_AFTER_MS + 1)
    assert mark(registry) == (0, 0)
    assert status_of(engine, "gpu-a") is NodeStatus.DRAINING
    registry.set_draining("gpu-a", False)
    assert status_of(engine, "gpu-a") is NodeStatus.HEALTHY
    assert mark(registry) == (1, 0)  # undrained but silent: demoted by the next check
    with pytest.raises(UnknownNode):
        registry.set_draining("gpu-nope", True)


def test_batched_heartbeat_updates_every_node_and_ignores_unknown_ones(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    for name in ("gpu-a", "gpu-b", "gpu-c"):
        registry.register_node(name, FACTS)
    clock.advance(5_000)
    registry.heartbeat(
        [
            Heartbeat("gpu-c", available_vram=3 * GIB, available_ram=30 * GIB),
            Heartbeat("gpu-nope", available_vram=9 * GIB, available_ram=9 * GIB),
            Heartbeat("gpu-a", available_vram=1 * GIB, available_ram=10 * GIB),
        ]
    )
    registry.heartbeat([])
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                nodes_table.c.name,
                nodes_table.c.available_vram,
                nodes_table.c.available_ram,
                nodes_table.c.last_heartbeat_ms,
            ).order_by(nodes_table.c.name)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("gpu-a", 1 * GIB, 10 * GIB, clock()),
        ("gpu-b", 78 * GIB, 0, clock() - 5_000),
        ("gpu-c", 3 * GIB, 30 * GIB, clock()),
    ]


def test_heartbeat_never_touches_reserved_vram_nor_open_reservations(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    registry.approve_node("gpu-a")
    assert registry.reserve("gpu-a", 30 * GIB, "load:x:gpu-a:0", ttl_ms=600_000) is not None
    # the load is allocating: the card reports less free than is reserved
    registry.heartbeat([Heartbeat("gpu-a", available_vram=10 * GIB, available_ram=GIB)])
    registry.heartbeat([Heartbeat("gpu-a", available_vram=80 * GIB, available_ram=GIB)])
    [node] = registry.snapshot().nodes
    assert (node.available_vram, node.reserved_vram, node.free_vram) == (80 * GIB, 30 * GIB, 50 * GIB)
    with engine.connect() as conn:
        assert reservations.open_reserved_by_node(conn) == {"gpu-a": 30 * GIB}
    assert registry.reserve("gpu-a", 51 * GIB, "load:y:gpu-a:0", ttl_ms=600_000) is None
    assert registry.release("load:x:gpu-a:0") is True
    assert registry.snapshot().nodes[0].reserved_vram == 0


def test_manifest_labels_are_replaced_exactly_and_auto_labels_stay(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", FACTS)
    auto = {
        "gpu.vendor": ("nvidia", "auto"),
        "gpu.vram": ("80GiB", "auto"),
        "node.name": ("gpu-a", "auto"),
        "node.replica-slots": ("1", "auto"),
    }
    assert labels_of(engine, "gpu-a") == auto
    registry.set_labels("gpu-a", {"zone": "eu-1", "tier": "gold"})
    assert labels_of(engine, "gpu-a") == auto | {"zone": ("eu-1", "manifest"), "tier": ("gold", "manifest")}
    registry.set_labels("gpu-a", {"tier": "silver", "rack": "r7"})
    assert labels_of(engine, "gpu-a") == auto | {"tier": ("silver", "manifest"), "rack": ("r7", "manifest")}
    registry.register_node("gpu-a", FACTS)  # re-registration rewrites the auto labels only
    assert labels_of(engine, "gpu-a") == auto | {"tier": ("silver", "manifest"), "rack": ("r7", "manifest")}
    registry.set_labels("gpu-a", {})
    assert labels_of(engine, "gpu-a") == auto


def test_auto_labels_follow_the_facts_and_the_slots(engine: Engine, clock: ManualClock) -> None:
    assert nodes.auto_labels("n", NodeFacts(total_vram=int(23.6 * GIB)), 2) == {
        "gpu.vendor": "none",
        "gpu.vram": "24GiB",
        "node.name": "n",
        "node.replica-slots": "2",
    }
    with engine.begin() as conn:
        nodes.register(conn, "gpu-a", FACTS, now_ms=clock(), max_replicas_per_model=3)
        assert labels_of_conn(conn, "gpu-a")["node.replica-slots"] == "3"
        nodes.set_max_replicas_per_model(conn, "gpu-a", 4, now_ms=clock())
        assert labels_of_conn(conn, "gpu-a")["node.replica-slots"] == "4"
        slots = conn.execute(select(nodes_table.c.max_replicas_per_model)).scalar_one()
        assert slots == 4
        with pytest.raises(UnknownNode):
            nodes.set_max_replicas_per_model(conn, "gpu-nope", 4, now_ms=clock())


def test_backend_state_is_upserted(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        nodes.register(conn, "gpu-a", FACTS, now_ms=clock())
        nodes.set_backend_state(conn, "gpu-a", "llama", "installing", now_ms=clock())
        nodes.set_backend_state(conn, "gpu-a", "llama", "failed", now_ms=clock(), error="pip exited 1")
        nodes.set_backend_state(conn, "gpu-a", "llama", "installed", now_ms=clock(), version="b4567")
        rows = conn.execute(
            select(
                node_backends.c.backend, node_backends.c.state, node_backends.c.version, node_backends.c.last_error
            )
        ).all()
    assert [tuple(r) for r in rows] == [("llama", "installed", "b4567", None)]


def test_removing_a_node_takes_its_rows_with_it(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        for name in ("gpu-a", "gpu-b"):
            nodes.register(conn, name, FACTS, now_ms=clock())
            nodes.set_manifest_labels(conn, name, {"zone": "eu-1"})
            nodes.set_backend_state(conn, name, "llama", "installed", now_ms=clock())
            replicas.upsert(conn, replicas.ReplicaRecord("chat", name, 0, ReplicaState.RUNNING), now_ms=clock())
            reservations.reserve(conn, name, GIB, f"load:chat:{name}:1", ttl_ms=60_000, now_ms=clock())
    with engine.begin() as conn:
        nodes.remove(conn, "gpu-a")
    with engine.connect() as conn:
        for table in (nodes_table, node_labels, node_backends, replicas_table, vram_reservations):
            column = table.c.name if table is nodes_table else table.c.node
            leftover = conn.execute(select(func.count()).select_from(table).where(column == "gpu-a")).scalar_one()
            kept = conn.execute(select(func.count()).select_from(table).where(column == "gpu-b")).scalar_one()
            assert (table.name, leftover) == (table.name, 0)
            assert kept > 0


def test_records_show_what_a_person_lists(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-b", FACTS, address="10.0.0.2:7070")
    registry.register_node("gpu-a", NodeFacts())
    registry.mark_unreachable("gpu-b", "connection refused")
    for index in (0, 1):
        registry.upsert_replica(replicas.ReplicaRecord("chat", "gpu-b", index, ReplicaState.RUNNING))
    a, b = registry.node_records()
    assert (a.name, a.status, a.approved, a.address, a.replicas) == ("gpu-a", NodeStatus.PENDING, False, None, 0)
    assert (b.name, b.address, b.total_vram, b.available_vram) == ("gpu-b", "10.0.0.2:7070", 80 * GIB, 78 * GIB)
    assert (b.last_heartbeat_ms, b.last_error, b.replicas) == (clock(), "connection refused", 2)
    with engine.connect() as conn:
        assert replicas.on_node(conn, "gpu-b") == (("chat", 0), ("chat", 1))
        assert replicas.on_node(conn, "gpu-a") == ()


def test_undraining_returns_a_node_to_what_its_approval_allows(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("approved", FACTS)
    registry.approve_node("approved")
    registry.register_node("never-approved", FACTS)
    registry.register_node("offline", FACTS)
    registry.approve_node("offline")
    with engine.begin() as conn:
        conn.execute(update(nodes_table).where(nodes_table.c.name == "offline").values(status="offline"))
        for name in ("approved", "never-approved"):
            nodes.set_draining(conn, name, True, now_ms=clock())
        assert nodes.undrain(conn, "approved", now_ms=clock()) is NodeStatus.HEALTHY
        assert nodes.undrain(conn, "never-approved", now_ms=clock()) is NodeStatus.PENDING
        assert nodes.undrain(conn, "offline", now_ms=clock()) is NodeStatus.OFFLINE  # not draining: left alone
        assert nodes.lock(conn, "never-approved") == (NodeStatus.PENDING, False)
        with pytest.raises(UnknownNode):
            nodes.undrain(conn, "gpu-nope", now_ms=clock())
        with pytest.raises(UnknownNode):
            nodes.lock(conn, "gpu-nope")
