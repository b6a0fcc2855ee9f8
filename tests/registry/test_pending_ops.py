"""Durable intent: idempotent recording, claiming due work, backoff, dead letters and requeueing."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from fleetd.registry import pending_ops
from fleetd.registry.facade import Registry
from fleetd.registry.pending_ops import OpState
from fleetd.registry.tables import pending_ops as pending_ops_table
from tests.conftest import Database, ManualClock

SECOND = 1_000
MINUTE = 60 * SECOND


def test_recording_the_same_intent_again_refreshes_it_without_a_duplicate(
    engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    first = registry.record_intent("gpu-a", "chat/0", "load", {"config_hash": "h1"})
    other = registry.record_intent("gpu-a", "chat/0", "unload", {})
    clock.advance(5 * SECOND)
    again = registry.record_intent("gpu-a", "chat/0", "load", {"config_hash": "h2"})
    assert again == first != other
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(pending_ops_table)).scalar_one() == 2
        op = pending_ops.get(conn, first)
        row = conn.execute(select(pending_ops_table).where(pending_ops_table.c.id == first)).one()
    assert op is not None
    assert (op.idempotency_key, op.payload, op.state, op.attempts) == (
        "gpu-a/chat/0/load",
        {"config_hash": "h2"},
        OpState.PENDING,
        0,
    )
    assert (row.created_ms, row.updated_ms, row.next_attempt_ms) == (
        clock() - 5 * SECOND,
        clock(),
        clock() - 5_000,
    )


def test_refreshing_a_pending_or_running_intent_keeps_its_attempts_and_state(
    engine: Engine, clock: ManualClock
) -> None:
    with engine.begin() as conn:
        op_id = pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock())
        pending_ops.claim_due(conn, now_ms=clock())
        pending_ops.fail(conn, op_id, "timeout", now_ms=clock())
        pending_ops.record(conn, "gpu-a", "chat/0", "load", {"v": 2}, now_ms=clock())
        op = pending_ops.get(conn, op_id)
        assert op is not None
        assert (op.state, op.attempts, op.last_error, op.payload) == (OpState.PENDING, 1, "timeout", {"v": 2})
        assert len(pending_ops.claim_due(conn, now_ms=clock() + 30 * SECOND)) == 1
        pending_ops.record(conn, "gpu-a", "chat/0", "load", {"v": 3}, now_ms=clock())
        op = pending_ops.get(conn, op_id)
        assert op is not None
        assert (op.state, op.attempts, op.payload) == (OpState.RUNNING, 1, {"v": 3})


def test_refreshing_a_finished_intent_makes_it_pending_again(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        op_id = pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock())
        pending_ops.claim_due(conn, now_ms=clock())
        pending_ops.complete(conn, op_id, now_ms=clock())
        assert pending_ops.claim_due(conn, now_ms=clock() + 60 * MINUTE) == []
        clock.advance(MINUTE)
        assert pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock()) == op_id
        op = pending_ops.get(conn, op_id)
        assert op is not None
        assert (op.state, op.attempts, op.next_attempt_ms, op.last_error) == (OpState.PENDING, 0, clock(), None)


def test_claim_due_returns_due_pending_intents_only_oldest_first(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        early = pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock())
        later = pending_ops.record(conn, "gpu-b", "chat/1", "load", {}, now_ms=clock() + 10 * SECOND)
        done = pending_ops.record(conn, "gpu-a", "chat/2", "load", {}, now_ms=clock())
        pending_ops.complete(conn, done, now_ms=clock())
        claimed = pending_ops.claim_due(conn, now_ms=clock())
        assert [(op.id, op.state) for op in claimed] == [(early, OpState.RUNNING)]
        assert pending_ops.claim_due(conn, now_ms=clock()) == []  # running intents are not handed out twice
        clock.advance(10 * SECOND)
        assert [op.id for op in pending_ops.claim_due(conn, now_ms=clock())] == [later]
        assert [op.id for op in pending_ops.list_ops(conn, state=OpState.RUNNING)] == [early, later]
        assert [op.id for op in pending_ops.list_ops(conn)] == [early, later, done]


def test_claim_due_honours_its_limit_in_due_order(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        ids = [
            pending_ops.record(conn, "gpu-a", f"chat/{i}", "load", {}, now_ms=clock() - i * SECOND)
            for i in range(5)
        ]
        first = pending_ops.claim_due(conn, now_ms=clock(), limit=2)
        rest = pending_ops.claim_due(conn, now_ms=clock(), limit=10)
    assert sorted(op.id for op in first) == sorted(ids[3:])  # the two due longest ago
    assert sorted(op.id for op in rest) == sorted(ids[:3])


def test_failures_back_off_then_dead_letter_and_a_person_can_requeue(engine: Engine, clock: ManualClock) -> None:
    max_attempts = 8
    with engine.begin() as conn:
        op_id = pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock())
    delays = []
    for attempt in range(1, max_attempts + 1):
        with engine.begin() as conn:
            [claimed] = pending_ops.claim_due(conn, now_ms=clock())
            assert claimed.id == op_id
            state = pending_ops.fail(conn, op_id, f"error {attempt}", now_ms=clock(), max_attempts=max_attempts)
            op = pending_ops.get(conn, op_id)
        assert op is not None
        assert op.attempts == attempt
        if attempt < max_attempts:
            assert state is OpState.PENDING
            delays.append(op.next_attempt_ms - clock())
            with engine.begin() as conn:
                assert pending_ops.claim_due(conn, now_ms=op.next_attempt_ms - 1) == []
            clock.advance(op.next_attempt_ms - clock())
        else:
            assert state is OpState.DEAD
            assert (op.state, op.last_error) == (OpState.DEAD, f"error {max_attempts}")
    assert delays == [30_000, 60_000, 120_000, 240_000, 480_000, 900_000, 900_000]
    assert [pending_ops.backoff_ms(n) for n in (0, 1, 2, 6, 1_000)] == [0, 30_000, 60_000, 900_000, 900_000]
    with engine.begin() as conn:
        assert (
            pending_ops.claim_due(conn, now_ms=clock() + 24 * 60 * MINUTE) == []
        )  # dead letters wait for a person
        assert [op.id for op in pending_ops.list_ops(conn, state=OpState.DEAD)] == [op_id]
        pending_ops.requeue(conn, op_id, now_ms=clock())
        [claimed] = pending_ops.claim_due(conn, now_ms=clock())
    assert (claimed.id, claimed.attempts, claimed.state) == (op_id, 0, OpState.RUNNING)


def test_a_long_error_is_truncated(engine: Engine, clock: ManualClock) -> None:
    with engine.begin() as conn:
        op_id = pending_ops.record(conn, "gpu-a", "chat/0", "load", {}, now_ms=clock())
        pending_ops.fail(conn, op_id, "x" * 10_000, now_ms=clock())
        op = pending_ops.get(conn, op_id)
    assert op is not None
    assert op.last_error == "x" * 4000
    with engine.connect() as conn:
        assert pending_ops.get(conn, op_id + 1000) is None


def test_concurrent_claimers_never_get_the_same_intent(
    database: Database, engine: Engine, clock: ManualClock
) -> None:
    """Two controllers claiming at once: on PostgreSQL the second skips the rows the first has locked; on
    SQLite ``BEGIN IMMEDIATE`` makes the second wait for the first, so it sees them already running."""
    with engine.begin() as conn:
        ids = {pending_ops.record(conn, "gpu-a", f"chat/{i}", "load", {}, now_ms=clock()) for i in range(4)}
    if database.dialect == "sqlite":
        with engine.begin() as first:
            first_claim = pending_ops.claim_due(first, now_ms=clock(), limit=3)
        with engine.begin() as second:
            second_claim = pending_ops.claim_due(second, now_ms=clock(), limit=3)
    else:
        with engine.begin() as first, engine.begin() as second:
            first_claim = pending_ops.claim_due(first, now_ms=clock(), limit=3)
            second_claim = pending_ops.claim_due(second, now_ms=clock(), limit=3)
    first_ids = {op.id for op in first_claim}
    second_ids = {op.id for op in second_claim}
    assert len(first_ids) == 3
    assert first_ids.isdisjoint(second_ids)
    assert first_ids | second_ids == ids
