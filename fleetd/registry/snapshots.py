"""``snapshot(conn) -> ObservedState``: the registry as the planner sees it, in five queries whatever its size.

One query per table (nodes, labels, installed backends, replicas, scheduling records), each fetched in one go
and grouped in Python; no query per node or replica (no N+1). Run it in a read-only transaction so that every
part is of one moment. Timestamps are stored as integer milliseconds and shown as ISO 8601 UTC (``last_used``,
``state_since``, ``cooldown_until``).

A ``SnapshotCache`` makes the snapshots of one registry cheap at fleet scale: building 50,000 frozen replicas
(two timestamps formatted each) costs more than reading their rows. It keeps the values the last snapshot built,
keyed by the whole row they were built from, so a row that did not change gets the very same value back, and a
snapshot in which nothing changed returns the previous ``ObservedState`` itself, with the fingerprint and the
indexes it already computed. Keying by the complete row (every column the value is made of) is what keeps it
exact: a cached value is always the one the row would build. The rows are read as the driver's tuples and first
compared with the last snapshot's whole lists (one C-level comparison), so a quiet fleet hashes no row at all.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Select, select

from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import iso_from_ms
from fleetd.registry.replicas import tombstones
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas, scheduling_state

Row = tuple[Any, ...]
NodeKey = tuple[Row, tuple[tuple[str, str], ...], tuple[str, ...]]
"""A node's row, labels and installed backends: all an ``ObservedNode`` is built from."""


@dataclass(frozen=True, slots=True)
class _Built:
    """What one snapshot read, and the values it built from it."""

    node_rows: tuple[list[Row], ...] = ()
    """The rows of the nodes, labels and backends queries."""
    nodes: Mapping[NodeKey, ObservedNode] = field(default_factory=dict)
    replica_rows: list[Row] = field(default_factory=list)
    replicas: Mapping[Row, ObservedReplica] = field(default_factory=dict)
    state: ObservedState = field(default_factory=ObservedState)


class SnapshotCache:
    """The last snapshot's values of one registry, for the next snapshot to reuse (see the module docstring).
    Safe to share between threads: a snapshot reads the last one and replaces it whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = _Built()

    @property
    def last(self) -> _Built:
        with self._lock:
            return self._last

    def keep(self, built: _Built) -> None:
        with self._lock:
            self._last = built


def snapshot(conn: Connection, cache: SnapshotCache | None = None) -> ObservedState:
    """The registry's observed state; with ``cache``, unchanged rows reuse the values the last snapshot built."""
    last = cache.last if cache is not None else _Built()
    node_rows = _node_rows(conn)
    node_values = last.nodes if node_rows == last.node_rows else _nodes(node_rows, last.nodes)
    replica_rows = _fetch(conn, _REPLICAS)
    same = replica_rows == last.replica_rows  # one C-level comparison: a quiet fleet hashes no row
    replica_values = last.replicas if same else _replicas(replica_rows, last.replicas)
    records = _records(conn)
    nodes_ = tuple(node_values.values())
    replicas_ = _mark_replaced(tuple(replica_values.values()), tombstones(conn))
    previous = last.state
    if nodes_ == previous.nodes and replicas_ == previous.replicas and records == previous.scheduling:
        state = previous  # nothing changed: the same value, with what it already computed
    else:
        state = ObservedState(nodes=nodes_, replicas=replicas_, scheduling=records)
    if cache is not None:
        cache.keep(_Built(node_rows, node_values, replica_rows, replica_values, state))
    return state


def _mark_replaced(
    values: tuple[ObservedReplica, ...], replaced: frozenset[tuple[str, str, int]]
) -> tuple[ObservedReplica, ...]:
    """Flag the replicas a returning node reports again after they were forgotten (their tombstones; rare)."""
    if not replaced:
        return values
    return tuple(replace(r, replaced=True) if (r.instance, r.node, r.replica) in replaced else r for r in values)


def _fetch(conn: Connection, statement: Select[Any]) -> list[Row]:
    """The statement's rows as the driver's plain tuples: SQLAlchemy's ``Row`` objects cost microseconds each,
    and the columns read here need no conversion."""
    result = conn.execute(statement)
    try:
        return [tuple(row) for row in result.cursor.fetchall()] if result.cursor is not None else []
    finally:
        result.close()


_LABELS = select(node_labels.c.node, node_labels.c.key, node_labels.c.value).order_by(
    node_labels.c.node, node_labels.c.key
)
_BACKENDS = (
    select(node_backends.c.node, node_backends.c.backend)
    .where(node_backends.c.state == "installed")
    .order_by(node_backends.c.node, node_backends.c.backend)
)
_NODES = select(
    nodes.c.name,
    nodes.c.status,
    nodes.c.gpu_vendor,
    nodes.c.total_vram,
    nodes.c.available_vram,
    nodes.c.reserved_vram,
    nodes.c.total_ram,
    nodes.c.available_ram,
    nodes.c.max_replicas_per_model,
    nodes.c.approved,
    nodes.c.last_error,
).order_by(nodes.c.name)
_REPLICAS = select(
    replicas.c.instance,
    replicas.c.node,
    replicas.c.replica,
    replicas.c.state,
    replicas.c.address,
    replicas.c.config_hash,
    replicas.c.vram_bytes,
    replicas.c.in_flight,
    replicas.c.last_used_ms,
    replicas.c.restarts,
    replicas.c.last_error,
    replicas.c.state_since_ms,
    replicas.c.restart_requested_ms,
).order_by(replicas.c.instance, replicas.c.node, replicas.c.replica)


def _node_rows(conn: Connection) -> tuple[list[Row], ...]:
    return (_fetch(conn, _NODES), _fetch(conn, _LABELS), _fetch(conn, _BACKENDS))


def _nodes(rows: tuple[list[Row], ...], known: Mapping[NodeKey, ObservedNode]) -> dict[NodeKey, ObservedNode]:
    node_rows, label_rows, backend_rows = rows
    labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for node, key, value in label_rows:
        labels[node].append((key, value))
    backends: dict[str, list[str]] = defaultdict(list)
    for node, backend in backend_rows:
        backends[node].append(backend)
    built: dict[NodeKey, ObservedNode] = {}
    for row in node_rows:
        key = (row, tuple(labels.get(row[0], ())), tuple(backends.get(row[0], ())))
        value = known.get(key)
        built[key] = value if value is not None else _node(key)
    return built


def _node(key: NodeKey) -> ObservedNode:
    row, labels, backends = key
    name, status, vendor, total_vram, available_vram, reserved_vram, total_ram, available_ram, slots = row[:9]
    approved, last_error = row[9:]
    return ObservedNode(
        name=name,
        status=NodeStatus(status),
        labels=labels,
        gpu_vendor=vendor,
        total_vram=total_vram,
        available_vram=available_vram,
        reserved_vram=reserved_vram,
        total_ram=total_ram,
        available_ram=available_ram,
        max_replicas_per_model=slots,
        backends=backends,
        approved=bool(approved),
        last_error=last_error,
    )


def _replicas(rows: list[Row], known: Mapping[Row, ObservedReplica]) -> dict[Row, ObservedReplica]:
    built: dict[Row, ObservedReplica] = {}
    for row in rows:
        value = known.get(row)
        built[row] = value if value is not None else _replica(row)
    return built


def _replica(row: tuple[Any, ...]) -> ObservedReplica:
    instance, node, index, state, address, config_hash, vram, in_flight, last_used = row[:9]
    restarts, last_error, state_since, requested = row[9:]
    return ObservedReplica(
        instance=instance,
        node=node,
        replica=index,
        state=ReplicaState(state),
        address=address,
        config_hash=config_hash,
        vram_bytes=vram,
        in_flight=in_flight,
        last_used=_iso(last_used),
        restarts=restarts,
        last_error=last_error,
        state_since=_iso(state_since),
        restart_requested=requested is not None,
    )


def _records(conn: Connection) -> tuple[SchedulingRecord, ...]:
    rows = _fetch(
        conn,
        select(
            scheduling_state.c.instance,
            scheduling_state.c.unsatisfiable_ticks,
            scheduling_state.c.cooldown_until_ms,
            scheduling_state.c.capacity_digest,
            scheduling_state.c.reasons,
        ).order_by(scheduling_state.c.instance),
    )
    return tuple(
        SchedulingRecord(
            instance=instance,
            unsatisfiable_ticks=ticks,
            cooldown_until=_iso(until),
            capacity=capacity,
            reasons=_reasons(reasons),
        )
        for instance, ticks, until, capacity, reasons in rows
    )


def _reasons(text: str | None) -> tuple[tuple[str, int], ...]:
    """A record's kept rejection reasons; unreadable ones (a hand-edited row) are dropped, not fatal."""
    if not text:
        return ()
    try:
        pairs = json.loads(text)
        return tuple(sorted((str(code), int(count)) for code, count in pairs))
    except (ValueError, TypeError):
        return ()


def _iso(ms: int | None) -> str | None:
    return iso_from_ms(ms) if ms is not None else None
