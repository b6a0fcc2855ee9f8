"""VRAM reservations: atomic admission, idempotency per operation, release, renewal, expiry, the ledger."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select

from fleetd.registry import reservations
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.registry.reservations import Reservation, ReservationConflict
from fleetd.registry.tables import nodes, vram_reservations
from tests.conftest import ManualClock

GIB = 1024**3
TTL_MS = 60_000


@pytest.fixture
def registry(engine: Engine, clock: ManualClock) -> Registry:
    registry = Registry(engine, clock)
    for name in ("gpu-a", "gpu-b"):
        registry.register_node(name, NodeFacts(gpu_vendor="nvidia", total_vram=80 * GIB, available_vram=40 * GIB))
        registry.approve_node(name)
    return registry


def reserved(registry: Registry, node: str) -> int:
    with registry.engine.connect() as conn:
        value: int = conn.execute(select(nodes.c.reserved_vram).where(nodes.c.name == node)).scalar_one()
        return value


def ledger_row(registry: Registry, op_id: str) -> Any:
    with registry.engine.connect() as conn:
        return conn.execute(select(vram_reservations).where(vram_reservations.c.op_id == op_id)).one()


def test_admits_up_to_exactly_the_free_vram_and_records_the_admission(
    registry: Registry, clock: ManualClock
) -> None:
    first = registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    assert first == Reservation("op-1", "gpu-a", 30 * GIB, clock() + TTL_MS)
    assert registry.reserve("gpu-a", 10 * GIB + 1, "op-2", ttl_ms=TTL_MS) is None
    assert registry.reserve("gpu-a", 10 * GIB, "op-3", ttl_ms=TTL_MS) is not None
    assert reserved(registry, "gpu-a") == 40 * GIB
    assert reserved(registry, "gpu-b") == 0
    row = ledger_row(registry, "op-3")
    assert (row.node, row.bytes, row.available_at_reserve, row.reserved_after) == (
        "gpu-a",
        10 * GIB,
        40 * GIB,
        40 * GIB,
    )
    assert (row.created_ms, row.expires_ms, row.released_ms, row.release_reason) == (
        clock(),
        clock() + TTL_MS,
        None,
        None,
    )
    with registry.engine.connect() as conn:
        assert conn.execute(select(vram_reservations.c.op_id).order_by("op_id")).scalars().all() == [
            "op-1",
            "op-3",
        ]


def test_a_refused_or_unknown_node_reservation_leaves_no_trace(registry: Registry) -> None:
    assert registry.reserve("gpu-nope", GIB, "op-1", ttl_ms=TTL_MS) is None
    assert registry.reserve("gpu-a", 41 * GIB, "op-2", ttl_ms=TTL_MS) is None
    with registry.engine.connect() as conn:
        assert conn.execute(select(vram_reservations)).all() == []
    assert reserved(registry, "gpu-a") == 0
    with pytest.raises(ValueError, match="positive size"):
        registry.reserve("gpu-a", 0, "op-3", ttl_ms=TTL_MS)


def test_reserving_again_for_the_same_operation_is_idempotent_and_renews(
    registry: Registry, clock: ManualClock
) -> None:
    registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    clock.advance(10_000)
    again = registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    assert again == Reservation("op-1", "gpu-a", 30 * GIB, clock() + TTL_MS)
    assert reserved(registry, "gpu-a") == 30 * GIB
    assert ledger_row(registry, "op-1").expires_ms == clock() + TTL_MS


@pytest.mark.parametrize(
    ("node", "size"), [("gpu-a", 20 * GIB), ("gpu-b", 30 * GIB)], ids=["other-size", "other-node"]
)
def test_the_same_operation_cannot_reserve_something_else(registry: Registry, node: str, size: int) -> None:
    registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    with pytest.raises(ReservationConflict, match="op-1"):
        registry.reserve(node, size, "op-1", ttl_ms=TTL_MS)
    assert (reserved(registry, "gpu-a"), reserved(registry, "gpu-b")) == (30 * GIB, 0)


def test_a_released_operation_cannot_reserve_again(registry: Registry) -> None:
    registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    assert registry.release("op-1") is True
    with pytest.raises(ReservationConflict, match="released"):
        registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    assert reserved(registry, "gpu-a") == 0


def test_release_returns_the_bytes_once(registry: Registry, clock: ManualClock) -> None:
    registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    registry.reserve("gpu-a", 5 * GIB, "op-2", ttl_ms=TTL_MS)
    clock.advance(1_000)
    assert registry.release("op-1", reason="failed") is True
    assert registry.release("op-1") is False
    assert registry.release("op-never") is False
    assert reserved(registry, "gpu-a") == 5 * GIB
    row = ledger_row(registry, "op-1")
    assert (row.released_ms, row.release_reason) == (clock(), "failed")


def test_renew_extends_only_open_reservations(registry: Registry, clock: ManualClock) -> None:
    registry.reserve("gpu-a", GIB, "op-1", ttl_ms=TTL_MS)
    clock.advance(TTL_MS - 1)
    with registry.engine.begin() as conn:
        assert reservations.renew(conn, "op-1", ttl_ms=TTL_MS, now_ms=clock()) is True
    clock.advance(TTL_MS - 1)
    assert registry.reclaim_expired() == 0  # renewed, so not expired yet
    registry.release("op-1")
    with registry.engine.begin() as conn:
        assert reservations.renew(conn, "op-1", ttl_ms=TTL_MS, now_ms=clock()) is False
        assert reservations.renew(conn, "op-never", ttl_ms=TTL_MS, now_ms=clock()) is False


def test_reclaim_frees_expired_reservations_only_and_only_once(registry: Registry, clock: ManualClock) -> None:
    registry.reserve("gpu-a", 10 * GIB, "short-a", ttl_ms=10_000)
    registry.reserve("gpu-a", 3 * GIB, "short-a2", ttl_ms=10_000)
    registry.reserve("gpu-b", 7 * GIB, "short-b", ttl_ms=10_000)
    registry.reserve("gpu-a", 20 * GIB, "long-a", ttl_ms=TTL_MS)
    registry.reserve("gpu-b", 1 * GIB, "done-b", ttl_ms=5_000)
    registry.release("done-b")
    clock.advance(9_999)
    assert registry.reclaim_expired() == 0
    clock.advance(1)  # the TTL has passed at exactly created + ttl
    assert registry.reclaim_expired() == 3
    assert registry.reclaim_expired() == 0
    assert (reserved(registry, "gpu-a"), reserved(registry, "gpu-b")) == (20 * GIB, 0)
    for op_id in ("short-a", "short-a2", "short-b"):
        row = ledger_row(registry, op_id)
        assert (row.released_ms, row.release_reason) == (clock(), "expired")
    assert ledger_row(registry, "done-b").release_reason == "done"
    assert ledger_row(registry, "long-a").released_ms is None
    # the operation finishing late must not return the bytes a second time
    assert registry.release("short-a") is False
    assert (reserved(registry, "gpu-a"), reserved(registry, "gpu-b")) == (20 * GIB, 0)
    with registry.engine.connect() as conn:
        assert reservations.open_reserved_by_node(conn) == {"gpu-a": 20 * GIB}


def test_free_vram_below_reserved_admits_nothing(registry: Registry) -> None:
    registry.reserve("gpu-a", 30 * GIB, "op-1", ttl_ms=TTL_MS)
    registry.heartbeat([Heartbeat("gpu-a", available_vram=20 * GIB, available_ram=0)])
    assert registry.reserve("gpu-a", 1, "op-2", ttl_ms=TTL_MS) is None
    registry.heartbeat([Heartbeat("gpu-a", available_vram=31 * GIB, available_ram=0)])
    assert registry.reserve("gpu-a", GIB, "op-3", ttl_ms=TTL_MS) is not None
    row = ledger_row(registry, "op-3")
    assert (row.available_at_reserve, row.reserved_after) == (31 * GIB, 31 * GIB)


def test_open_reserved_by_node_sums_open_rows_per_node(registry: Registry) -> None:
    registry.reserve("gpu-a", 2 * GIB, "op-1", ttl_ms=TTL_MS)
    registry.reserve("gpu-a", 3 * GIB, "op-2", ttl_ms=TTL_MS)
    registry.reserve("gpu-b", 4 * GIB, "op-3", ttl_ms=TTL_MS)
    registry.reserve("gpu-b", 8 * GIB, "op-4", ttl_ms=TTL_MS)
    registry.release("op-4")
    with registry.engine.connect() as conn:
        assert reservations.open_reserved_by_node(conn) == {"gpu-a": 5 * GIB, "gpu-b": 4 * GIB}
    assert (reserved(registry, "gpu-a"), reserved(registry, "gpu-b")) == (5 * GIB, 4 * GIB)


def test_prune_released_trims_old_history_only(registry: Registry, clock: ManualClock) -> None:
    registry.reserve("gpu-a", GIB, "old", ttl_ms=TTL_MS)
    registry.reserve("gpu-a", GIB, "open", ttl_ms=TTL_MS)
    registry.release("old")
    clock.advance(1_000)
    registry.reserve("gpu-a", GIB, "recent", ttl_ms=TTL_MS)
    registry.release("recent")
    with registry.engine.begin() as conn:
        assert reservations.prune_released(conn, older_than_ms=clock()) == 1
        remaining = conn.execute(select(vram_reservations.c.op_id).order_by("op_id")).scalars().all()
    assert remaining == ["open", "recent"]
    assert reserved(registry, "gpu-a") == GIB
