"""VRAM reservations: capacity held for a load from the moment it is placed until its process holds it.

``reserve`` is one conditional UPDATE (``available_vram - reserved_vram >= bytes``; RAM on a node without a
GPU), so two controllers can
never both take the last free gigabytes. Each reservation belongs to an operation (``op_id``) and has a TTL;
it ends when the operation ends (``release``) or when the TTL passes (``reclaim_expired``), never because a
heartbeat arrived (LocalAI resets reservations on every reading; that reopens the window for over-commit).

Rows are a ledger: released reservations stay with ``released_ms`` and their reason, and each row records the
free VRAM it was admitted against and the node's reserved total after it, so an audit can prove that no
admission ever over-committed. ``prune_released`` trims old history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, String, and_, bindparam, case, delete, func, select, text, update
from sqlalchemy.exc import IntegrityError

from fleetd.registry.tables import nodes, vram_reservations

# The statements of the hot path (a reserve and a release per load) are built once: constructing a Core
# statement and computing its cache key costs more Python time than executing it (bench/registry.py).
_OP_ID = bindparam("r_op_id", type_=String())
_NODE = bindparam("r_node", type_=String())
_SIZE = bindparam("r_size", type_=BigInteger())
_NOW = bindparam("r_now_ms", type_=BigInteger())
_EXPIRES = bindparam("r_expires_ms", type_=BigInteger())
_REASON = bindparam("r_reason", type_=String())
_OPEN = and_(vram_reservations.c.op_id == _OP_ID, vram_reservations.c.released_ms.is_(None))

_FIND = select(vram_reservations).where(vram_reservations.c.op_id == _OP_ID)
# A node that reports no VRAM offers its RAM instead (architecture.md §6: CPU-only llama.cpp), as the planner
# counts it (``fleetd.planning.planner._node_capacity``).
_AVAILABLE = case((nodes.c.total_vram > 0, nodes.c.available_vram), else_=nodes.c.available_ram)
_AVAILABLE_SQL = "CASE WHEN total_vram > 0 THEN available_vram ELSE available_ram END"
_ADMIT = (
    update(nodes)
    .where(and_(nodes.c.name == _NODE, _AVAILABLE - nodes.c.reserved_vram >= _SIZE))
    .values(reserved_vram=nodes.c.reserved_vram + _SIZE)
    .returning(_AVAILABLE.label("available_vram"), nodes.c.reserved_vram)
)
_RECORD = vram_reservations.insert()
_RENEW = update(vram_reservations).where(_OPEN).values(expires_ms=_EXPIRES)
_END = (
    update(vram_reservations)
    .where(_OPEN)
    .values(released_ms=_NOW, release_reason=_REASON)
    .returning(vram_reservations.c.node, vram_reservations.c.bytes)
)
_GIVE_BACK = update(nodes).where(nodes.c.name == _NODE).values(reserved_vram=nodes.c.reserved_vram - _SIZE)

# PostgreSQL runs the admission (or the release) and its ledger write as one statement with a data-modifying
# CTE. The statement is atomic: if the ledger insert fails (a twin op id committed meanwhile), the admission is
# undone with it. An op id that already has a row admits nothing; ``reserve`` then looks at that row.
_ADMIT_AND_RECORD_PG = text(
    """
    WITH admitted AS (
        UPDATE nodes SET reserved_vram = reserved_vram + :r_size
        WHERE name = :r_node AND AVAILABLE - reserved_vram >= :r_size
          AND NOT EXISTS (SELECT 1 FROM vram_reservations WHERE op_id = :r_op_id)
        RETURNING AVAILABLE AS available_vram, reserved_vram
    )
    INSERT INTO vram_reservations
        (op_id, node, bytes, created_ms, expires_ms, available_at_reserve, reserved_after)
    SELECT :r_op_id, :r_node, :r_size, :r_now_ms, :r_expires_ms, available_vram, reserved_vram FROM admitted
    RETURNING op_id
    """.replace("AVAILABLE", _AVAILABLE_SQL)
).bindparams(_OP_ID, _NODE, _SIZE, _NOW, _EXPIRES)
_END_AND_GIVE_BACK_PG = text(
    """
    WITH ended AS (
        UPDATE vram_reservations SET released_ms = :r_now_ms, release_reason = :r_reason
        WHERE op_id = :r_op_id AND released_ms IS NULL
        RETURNING node, bytes
    )
    UPDATE nodes SET reserved_vram = nodes.reserved_vram - ended.bytes
    FROM ended WHERE nodes.name = ended.node
    RETURNING nodes.name
    """
).bindparams(_OP_ID, _NOW, _REASON)


class ReservationConflict(ValueError):
    """The op id already has a reservation on another node or of another size, or one that ended."""


@dataclass(frozen=True, slots=True)
class Reservation:
    op_id: str
    node: str
    bytes: int
    expires_ms: int


def reserve(conn: Connection, node: str, size: int, op_id: str, *, ttl_ms: int, now_ms: int) -> Reservation | None:
    """Hold ``size`` bytes of ``node``'s free VRAM for ``op_id``; ``None`` when it does not fit (or no such node).

    Idempotent: reserving again for an open op id returns the existing reservation and its TTL is renewed.
    Two writers reserving the same new op id at the same moment: one wins, the other gets
    ``ReservationConflict`` and its transaction must be rolled back (nothing of it was admitted).
    """
    if size <= 0:
        raise ValueError(f"a reservation needs a positive size, got {size}")
    params = {
        "r_op_id": op_id,
        "r_node": node,
        "r_size": size,
        "r_now_ms": now_ms,
        "r_expires_ms": now_ms + ttl_ms,
    }
    postgres = conn.dialect.name == "postgresql"
    if postgres:  # the common case in one statement; it admits nothing when the op id already has a row
        try:
            if conn.execute(_ADMIT_AND_RECORD_PG, params).first() is not None:
                return Reservation(op_id, node, size, now_ms + ttl_ms)
        except IntegrityError:
            raise ReservationConflict(
                f"operation {op_id!r} was reserved at the same moment by another writer"
            ) from None
    existing = conn.execute(_FIND, {"r_op_id": op_id}).first()
    if existing is not None:
        if existing.released_ms is not None or existing.node != node or existing.bytes != size:
            raise ReservationConflict(
                f"operation {op_id!r} already reserved {existing.bytes} bytes on "
                f"{existing.node!r}" + (" (released)" if existing.released_ms else "")
            )
        renew(conn, op_id, ttl_ms=ttl_ms, now_ms=now_ms)
        return Reservation(op_id, node, size, now_ms + ttl_ms)
    if postgres or not _admit_and_record(conn, params):
        return None  # it does not fit (or there is no such node)
    return Reservation(op_id, node, size, now_ms + ttl_ms)


def _admit_and_record(conn: Connection, params: dict[str, Any]) -> bool:
    admitted = conn.execute(_ADMIT, params).first()
    if admitted is None:
        return False
    conn.execute(
        _RECORD,
        {
            "op_id": params["r_op_id"],
            "node": params["r_node"],
            "bytes": params["r_size"],
            "created_ms": params["r_now_ms"],
            "expires_ms": params["r_expires_ms"],
            "available_at_reserve": admitted.available_vram,
            "reserved_after": admitted.reserved_vram,
        },
    )
    return True


def renew(conn: Connection, op_id: str, *, ttl_ms: int, now_ms: int) -> bool:
    """Extend an open reservation (a long load still in flight); False when it is no longer open."""
    result = conn.execute(_RENEW, {"r_op_id": op_id, "r_expires_ms": now_ms + ttl_ms})
    return result.rowcount == 1


def release(conn: Connection, op_id: str, *, now_ms: int, reason: str = "done") -> bool:
    """End a reservation and return its bytes to the node; False when it was not open (released twice)."""
    params = {"r_op_id": op_id, "r_now_ms": now_ms, "r_reason": reason}
    if conn.dialect.name == "postgresql":  # end and give back in one statement
        return conn.execute(_END_AND_GIVE_BACK_PG, params).first() is not None
    ended = conn.execute(_END, params).first()
    if ended is None:
        return False
    conn.execute(_GIVE_BACK, {"r_node": ended.node, "r_size": ended.bytes})
    return True


def reclaim_expired(conn: Connection, *, now_ms: int) -> int:
    """Release every reservation whose TTL passed (its operation died with its controller). Returns the count."""
    ended = conn.execute(
        update(vram_reservations)
        .where(and_(vram_reservations.c.released_ms.is_(None), vram_reservations.c.expires_ms <= now_ms))
        .values(released_ms=now_ms, release_reason="expired")
        .returning(vram_reservations.c.node, vram_reservations.c.bytes)
    ).all()
    per_node: dict[str, int] = {}
    for row in ended:
        per_node[row.node] = per_node.get(row.node, 0) + row.bytes
    if per_node:
        conn.execute(
            update(nodes)
            .where(nodes.c.name == bindparam("r_node"))
            .values(reserved_vram=nodes.c.reserved_vram - bindparam("r_bytes")),
            [{"r_node": n, "r_bytes": b} for n, b in sorted(per_node.items())],
        )
    return len(ended)


def open_reserved_by_node(conn: Connection) -> dict[str, int]:
    """Sum of open reservations per node, from the ledger (an audit compares it with ``nodes.reserved_vram``)."""
    rows = conn.execute(
        select(vram_reservations.c.node, func.sum(vram_reservations.c.bytes))
        .where(vram_reservations.c.released_ms.is_(None))
        .group_by(vram_reservations.c.node)
    ).all()
    return {node: int(total) for node, total in rows}


def prune_released(conn: Connection, *, older_than_ms: int) -> int:
    """Delete ledger rows released before ``older_than_ms``."""
    return conn.execute(
        delete(vram_reservations).where(
            and_(vram_reservations.c.released_ms.is_not(None), vram_reservations.c.released_ms < older_than_ms)
        )
    ).rowcount
