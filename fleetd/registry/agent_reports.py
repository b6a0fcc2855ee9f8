"""What an agent reports, written to the registry: the first step of every observation (architecture.md §3).

An agent is the truth about its own node: its readings become a heartbeat, its installed backends the node's
backend list, and its replicas the node's replica rows (a row the agent no longer reports is removed: the
process is gone). The controlling layer calls these for the embedded agent today and for each remote agent's
report in the distributed mode; nothing else writes observations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, delete, select, text, update

from fleetd.registry import nodes, replicas
from fleetd.registry.facade import Registry
from fleetd.registry.tables import node_backends
from fleetd.registry.tables import replicas as replica_rows


def record_report(registry: Registry, beat: nodes.Heartbeat, backends: Sequence[str]) -> None:
    """A heartbeat with the node's readings, and the backends it reports installed (one transaction)."""
    now = registry.clock()
    with registry.engine.begin() as conn:
        nodes.heartbeat(conn, [beat], now_ms=now)
        known = set(
            conn.execute(select(node_backends.c.backend).where(node_backends.c.node == beat.node)).scalars()
        )
        for backend in backends:
            if backend not in known:
                nodes.set_backend_state(conn, beat.node, backend, "installed", now_ms=now)


def sync_replicas(registry: Registry, node: str, records: Sequence[replicas.ReplicaRecord]) -> None:
    """Make the node's replica rows exactly ``records`` (one transaction): upsert each, remove the rest."""
    with registry.engine.begin() as conn:
        sync_replica_rows(conn, node, records, now_ms=registry.clock())


def sync_replica_rows(
    conn: Connection, node: str, records: Sequence[replicas.ReplicaRecord], *, now_ms: int
) -> None:
    _sync_many(conn, {node: tuple(records)}, now_ms=now_ms)


def _sync_many(
    conn: Connection, rows_by_node: dict[str, tuple[replicas.ReplicaRecord, ...]], *, now_ms: int
) -> None:
    """``sync_replica_rows`` for many nodes at once: one upsert of every row, one read, one delete."""
    if not rows_by_node:
        return
    replicas.upsert_many(conn, [r for rows in rows_by_node.values() for r in rows], now_ms=now_ms)
    wanted = {(r.node, r.instance, r.replica) for rows in rows_by_node.values() for r in rows}
    existing = _existing(conn, list(rows_by_node))
    gone = [{"g_node": n, "g_instance": i, "g_replica": r} for n, i, r in existing if (n, i, r) not in wanted]
    if gone:
        conn.execute(
            delete(replica_rows).where(
                and_(
                    replica_rows.c.node == bindparam("g_node"),
                    replica_rows.c.instance == bindparam("g_instance"),
                    replica_rows.c.replica == bindparam("g_replica"),
                )
            ),
            gone,
        )


_EXISTING_POSTGRESQL = text(
    "SELECT node, instance, replica FROM replicas WHERE node IN (SELECT json_array_elements_text(CAST(:nodes AS json)))"
)


def _existing(conn: Connection, names: list[str]) -> Sequence[tuple[str, str, int]]:
    """The (node, instance, replica) of every row of these nodes: on PostgreSQL with one JSON parameter rather
    than an ``IN`` list of thousands of bound names."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(_EXISTING_POSTGRESQL, {"nodes": json.dumps(names)})
    else:
        rows = conn.execute(
            select(replica_rows.c.node, replica_rows.c.instance, replica_rows.c.replica).where(
                replica_rows.c.node.in_(names)
            )
        )
    return [(str(n), str(i), int(r)) for n, i, r in rows]


@dataclass(frozen=True, slots=True)
class BeatWrite:
    """One heartbeat's share of a batch: its readings always; its backends and replica rows only when they
    changed since the node's previous heartbeat (``None``: unchanged); its replicas' live readings otherwise."""

    beat: nodes.Heartbeat
    new_backends: tuple[str, ...] = ()
    replica_rows: tuple[replicas.ReplicaRecord, ...] | None = None
    readings: tuple[replicas.ReplicaRecord, ...] = ()


def record_heartbeats(registry: Registry, writes: Sequence[BeatWrite]) -> None:
    """A batch of heartbeats in ONE transaction: the readings of every node in one statement, then what
    changed. Nodes are written in name order (as ``nodes.heartbeat`` does) so concurrent batches cannot
    deadlock on PostgreSQL."""
    if not writes:
        return
    now = registry.clock()
    ordered = sorted(writes, key=lambda w: w.beat.node)
    with registry.engine.begin() as conn:
        nodes.heartbeat(conn, [w.beat for w in ordered], now_ms=now)
        nodes.set_backends_installed(conn, [(w.beat.node, b) for w in ordered for b in w.new_backends], now_ms=now)
        _sync_many(conn, {w.beat.node: w.replica_rows for w in ordered if w.replica_rows is not None}, now_ms=now)
        readings = [r for w in ordered if w.replica_rows is None for r in w.readings]
        if readings:
            conn.execute(
                update(replica_rows)
                .where(
                    and_(
                        replica_rows.c.node == bindparam("r_node"),
                        replica_rows.c.instance == bindparam("r_instance"),
                        replica_rows.c.replica == bindparam("r_replica"),
                    )
                )
                .values(in_flight=bindparam("r_in_flight"), last_used_ms=bindparam("r_last_used")),
                [
                    {
                        "r_node": r.node,
                        "r_instance": r.instance,
                        "r_replica": r.replica,
                        "r_in_flight": r.in_flight,
                        "r_last_used": r.last_used_ms,
                    }
                    for r in readings
                ],
            )
