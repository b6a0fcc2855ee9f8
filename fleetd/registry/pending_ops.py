"""Durable intent: an operation is written down before it runs, so a crash never loses what was being done.

One row per (node, target, op), keyed by an idempotency key: recording the same intent again refreshes the
row instead of duplicating it. A failure schedules a retry with exponential backoff (30 s doubling to 15 min);
after ``max_attempts`` the row is dead-lettered with its last error for a person to look at (``requeue``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, select, update

from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import pending_ops

BACKOFF_FIRST_MS = 30_000
BACKOFF_MAX_MS = 15 * 60_000
DEFAULT_MAX_ATTEMPTS = 8


class OpState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PendingOp:
    id: int
    idempotency_key: str
    node: str
    target: str
    op: str
    payload: Mapping[str, Any]
    state: OpState
    attempts: int
    next_attempt_ms: int
    last_error: str | None


def idempotency_key(node: str, target: str, op: str) -> str:
    return f"{node}/{target}/{op}"


def backoff_ms(attempts: int) -> int:
    """Delay before the next try after ``attempts`` failures: 30 s, 60 s, 120 s, ... capped at 15 min."""
    if attempts <= 0:
        return 0
    return int(min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** min(attempts - 1, 16)))


def record(conn: Connection, node: str, target: str, op: str, payload: Mapping[str, Any], *, now_ms: int) -> int:
    """Write (or refresh) the intent to run ``op`` on ``target`` at ``node``; returns the row id.

    Refreshing a finished or dead intent makes it pending again with a fresh attempt count; refreshing one that
    is pending or running only updates its payload.
    """
    key = idempotency_key(node, target, op)
    stmt = insert_for(conn, pending_ops).values(
        idempotency_key=key,
        node=node,
        target=target,
        op=op,
        payload=dict(payload),
        state=OpState.PENDING.value,
        attempts=0,
        next_attempt_ms=now_ms,
        created_ms=now_ms,
        updated_ms=now_ms,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["idempotency_key"],
            set_={"payload": stmt.excluded.payload, "updated_ms": now_ms},
        )
    )
    conn.execute(
        update(pending_ops)
        .where(
            and_(
                pending_ops.c.idempotency_key == key,
                pending_ops.c.state.in_([OpState.DONE.value, OpState.DEAD.value]),
            )
        )
        .values(state=OpState.PENDING.value, attempts=0, next_attempt_ms=now_ms, last_error=None)
    )
    row_id: int = conn.execute(select(pending_ops.c.id).where(pending_ops.c.idempotency_key == key)).scalar_one()
    return row_id


def claim_due(conn: Connection, *, now_ms: int, limit: int = 100) -> list[PendingOp]:
    """Mark due pending intents running and return them (rows locked by another claimer are skipped)."""
    query = (
        select(pending_ops.c.id)
        .where(and_(pending_ops.c.state == OpState.PENDING.value, pending_ops.c.next_attempt_ms <= now_ms))
        .order_by(pending_ops.c.next_attempt_ms, pending_ops.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return []
    conn.execute(
        update(pending_ops).where(pending_ops.c.id.in_(ids)).values(state=OpState.RUNNING.value, updated_ms=now_ms)
    )
    return [_op(r) for r in conn.execute(select(pending_ops).where(pending_ops.c.id.in_(ids)).order_by("id"))]


def complete(conn: Connection, op_id: int, *, now_ms: int) -> None:
    conn.execute(
        update(pending_ops)
        .where(pending_ops.c.id == op_id)
        .values(state=OpState.DONE.value, last_error=None, updated_ms=now_ms)
    )


def fail(
    conn: Connection, op_id: int, error: str, *, now_ms: int, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> OpState:
    """Count a failed attempt: back off and retry, or dead-letter after ``max_attempts``."""
    attempts: int = conn.execute(select(pending_ops.c.attempts).where(pending_ops.c.id == op_id)).scalar_one() + 1
    state = OpState.DEAD if attempts >= max_attempts else OpState.PENDING
    conn.execute(
        update(pending_ops)
        .where(pending_ops.c.id == op_id)
        .values(
            state=state.value,
            attempts=attempts,
            next_attempt_ms=now_ms + backoff_ms(attempts),
            last_error=error[:4000],
            updated_ms=now_ms,
        )
    )
    return state


def requeue(conn: Connection, op_id: int, *, now_ms: int) -> None:
    """A person's retry of a dead-lettered intent."""
    conn.execute(
        update(pending_ops)
        .where(pending_ops.c.id == op_id)
        .values(state=OpState.PENDING.value, attempts=0, next_attempt_ms=now_ms, updated_ms=now_ms)
    )


def get(conn: Connection, op_id: int) -> PendingOp | None:
    row = conn.execute(select(pending_ops).where(pending_ops.c.id == op_id)).first()
    return _op(row) if row is not None else None


def list_ops(conn: Connection, *, state: OpState | None = None) -> list[PendingOp]:
    query = select(pending_ops).order_by(pending_ops.c.id)
    if state is not None:
        query = query.where(pending_ops.c.state == state.value)
    return [_op(r) for r in conn.execute(query)]


def _op(row: Any) -> PendingOp:
    return PendingOp(
        id=row.id,
        idempotency_key=row.idempotency_key,
        node=row.node,
        target=row.target,
        op=row.op,
        payload=row.payload,
        state=OpState(row.state),
        attempts=row.attempts,
        next_attempt_ms=row.next_attempt_ms,
        last_error=row.last_error,
    )
