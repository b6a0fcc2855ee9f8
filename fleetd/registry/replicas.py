"""Replica rows: one per (instance, node, index), written by the executor and the agents' reports.

``upsert`` is what an agent's report does (state, address, pid, config hash, usage); ``set_state`` moves one
replica through starting -> running -> unhealthy/stopping/failed; ``remove`` forgets a stopped one. Both
writers keep ``state_since_ms``, when the state last changed: set to now when the state changes (or when a row
from before the column was added is written), kept when it does not. The planner reads it to tell how long a
replica has been failed. ``forget`` removes the row of a replica on a lost node and keeps a tombstone of it
(``tombstones``): a returning node may report it again, and the planner then stops it first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, delete, func, insert, select, text, update

from fleetd.core.observed import ReplicaState
from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import nodes, replaced_replicas, replicas


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """What is known of one replica process."""

    instance: str
    node: str
    replica: int
    state: ReplicaState
    address: str | None = None
    pid: int | None = None
    process_start: str | None = None
    container_id: str | None = None
    config_hash: str = ""
    vram_bytes: int = 0
    restarts: int = 0
    last_error: str | None = None
    in_flight: int = 0
    last_used_ms: int | None = None


def upsert(conn: Connection, record: ReplicaRecord, *, now_ms: int) -> None:
    values = {
        "state": record.state.value,
        "address": record.address,
        "pid": record.pid,
        "process_start": record.process_start,
        "container_id": record.container_id,
        "config_hash": record.config_hash,
        "vram_bytes": record.vram_bytes,
        "restarts": record.restarts,
        "last_error": record.last_error,
        "in_flight": record.in_flight,
        "last_used_ms": record.last_used_ms,
        "updated_ms": now_ms,
    }
    stmt = insert_for(conn, replicas).values(
        instance=record.instance, node=record.node, replica=record.replica, state_since_ms=now_ms, **values
    )
    changes = {**values, "state_since_ms": _state_since(record.state, now_ms)}
    conn.execute(stmt.on_conflict_do_update(index_elements=["instance", "node", "replica"], set_=changes))


def set_state(
    conn: Connection,
    instance: str,
    node: str,
    replica: int,
    state: ReplicaState,
    *,
    now_ms: int,
    error: str | None = None,
) -> bool:
    result = conn.execute(
        update(replicas)
        .where(and_(replicas.c.instance == instance, replicas.c.node == node, replicas.c.replica == replica))
        .values(state=state.value, last_error=error, updated_ms=now_ms, state_since_ms=_state_since(state, now_ms))
    )
    return result.rowcount == 1


def remove(conn: Connection, instance: str, node: str, replica: int) -> bool:
    result = conn.execute(
        delete(replicas).where(
            and_(replicas.c.instance == instance, replicas.c.node == node, replicas.c.replica == replica)
        )
    )
    return result.rowcount == 1


def on_node(conn: Connection, node: str) -> tuple[tuple[str, int], ...]:
    """The (instance, index) of every replica row on ``node``, sorted."""
    rows = conn.execute(
        select(replicas.c.instance, replicas.c.replica)
        .where(replicas.c.node == node)
        .order_by(replicas.c.instance, replicas.c.replica)
    )
    return tuple((instance, index) for instance, index in rows)


@dataclass(frozen=True, slots=True)
class ReplicaPlace:
    """Where one replica runs: its node, and how that node's agent is reached (what ``fleetd logs`` needs)."""

    instance: str
    replica: int
    node: str
    node_address: str | None
    """The gRPC address of the node's ``fleetd agent``; ``None`` for a node without one: the in-process agent
    of a controller's machine (``local`` in the embedded mode)."""


def places(conn: Connection, instance: str) -> tuple[ReplicaPlace, ...]:
    """Every replica row of ``instance``, by index then node, with its node's address."""
    rows = conn.execute(
        select(replicas.c.replica, replicas.c.node, nodes.c.address)
        .select_from(replicas.join(nodes, nodes.c.name == replicas.c.node))
        .where(replicas.c.instance == instance)
        .order_by(replicas.c.replica, replicas.c.node)
    )
    return tuple(ReplicaPlace(instance, index, node, address) for index, node, address in rows)


_UPSERTED = (
    "state",
    "address",
    "pid",
    "process_start",
    "container_id",
    "config_hash",
    "vram_bytes",
    "restarts",
    "last_error",
    "in_flight",
    "last_used_ms",
    "updated_ms",
)


_RECORDSET = (
    ("instance", "text"),
    ("node", "text"),
    ("replica", "integer"),
    ("state", "text"),
    ("address", "text"),
    ("pid", "integer"),
    ("process_start", "text"),
    ("container_id", "text"),
    ("config_hash", "text"),
    ("vram_bytes", "bigint"),
    ("restarts", "integer"),
    ("last_error", "text"),
    ("in_flight", "integer"),
    ("last_used_ms", "bigint"),
)
_UPSERT_POSTGRESQL = text(
    f"INSERT INTO replicas ({', '.join(c for c, _ in _RECORDSET)}, updated_ms, state_since_ms) "
    "SELECT u.*, CAST(:now AS bigint), CAST(:now AS bigint) FROM json_to_recordset(CAST(:rows AS json)) AS u("
    + ", ".join(f"{c} {t}" for c, t in _RECORDSET)
    + ") ON CONFLICT (instance, node, replica) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPSERTED)
    + ", state_since_ms = CASE WHEN replicas.state = excluded.state "
    "THEN coalesce(replicas.state_since_ms, CAST(:now AS bigint)) ELSE CAST(:now AS bigint) END"
)


def upsert_many(conn: Connection, records: Sequence[ReplicaRecord], *, now_ms: int) -> None:
    """``upsert`` of many rows at once (heartbeat batches of thousands of nodes): on PostgreSQL one ``INSERT …
    SELECT FROM json_to_recordset(…) ON CONFLICT`` of one JSON parameter, elsewhere one executemany. A row
    named twice is written once, as last given (one statement may not update a row twice)."""
    if not records:
        return
    records = list({(r.instance, r.node, r.replica): r for r in records}.values())
    if conn.dialect.name == "postgresql":
        rows = [{c: getattr(r, c) for c, _ in _RECORDSET} for r in records]
        conn.execute(_UPSERT_POSTGRESQL, {"rows": json.dumps(rows), "now": now_ms})
        return
    stmt = insert_for(conn, replicas)
    excluded = stmt.excluded
    changes: dict[str, Any] = {name: excluded[name] for name in _UPSERTED}
    changes["state_since_ms"] = case(
        (replicas.c.state == excluded.state, func.coalesce(replicas.c.state_since_ms, now_ms)), else_=now_ms
    )
    rows = [
        {
            "instance": r.instance,
            "node": r.node,
            "replica": r.replica,
            "state": r.state.value,
            "address": r.address,
            "pid": r.pid,
            "process_start": r.process_start,
            "container_id": r.container_id,
            "config_hash": r.config_hash,
            "vram_bytes": r.vram_bytes,
            "restarts": r.restarts,
            "last_error": r.last_error,
            "in_flight": r.in_flight,
            "last_used_ms": r.last_used_ms,
            "updated_ms": now_ms,
            "state_since_ms": now_ms,
        }
        for r in records
    ]
    conn.execute(stmt.on_conflict_do_update(index_elements=["instance", "node", "replica"], set_=changes), rows)


def _state_since(state: ReplicaState, now_ms: int) -> ColumnElement[int]:
    """The new ``state_since_ms`` of a row being updated to ``state``: kept when the row is in that state
    already (and knows since when), now otherwise. SET expressions read the row as it was before the update,
    on SQLite and PostgreSQL alike."""
    return case(
        (replicas.c.state == state.value, func.coalesce(replicas.c.state_since_ms, now_ms)),
        else_=now_ms,
    )


def forget(conn: Connection, instance: str, node: str, replica: int, *, now_ms: int) -> None:
    """Remove the row of a replica on a lost node and keep its tombstone (``replaced_replicas``)."""
    remove(conn, instance, node, replica)
    end_tombstone(conn, instance, node, replica)
    conn.execute(
        insert(replaced_replicas).values(instance=instance, node=node, replica=replica, replaced_ms=now_ms)
    )


def end_tombstone(conn: Connection, instance: str, node: str, replica: int) -> None:
    """The controller loads or unloads this replica itself: a tombstone of it, if any, no longer applies."""
    conn.execute(
        delete(replaced_replicas).where(
            and_(
                replaced_replicas.c.instance == instance,
                replaced_replicas.c.node == node,
                replaced_replicas.c.replica == replica,
            )
        )
    )


def tombstones(conn: Connection) -> frozenset[tuple[str, str, int]]:
    """(instance, node, replica) of every replica forgotten on a lost node and not loaded or unloaded since."""
    rows = conn.execute(
        select(replaced_replicas.c.instance, replaced_replicas.c.node, replaced_replicas.c.replica)
    )
    return frozenset((instance, node, replica) for instance, node, replica in rows)
