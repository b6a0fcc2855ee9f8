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
exact: a cached value is always the one the row would build.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import iso_from_ms
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas, scheduling_state

NodeKey = tuple[tuple[Any, ...], tuple[tuple[str, str], ...], tuple[str, ...]]
"""A node's row, labels and installed backends: all an ``ObservedNode`` is built from."""


@dataclass(frozen=True, slots=True)
class _Built:
    """What one snapshot built, by what it was built from."""

    nodes: Mapping[NodeKey, ObservedNode] = field(default_factory=dict)
    replicas: Mapping[tuple[Any, ...], ObservedReplica] = field(default_factory=dict)
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
    node_values = _nodes(conn, last.nodes)
    replica_values = _replicas(conn, last.replicas)
    records = _records(conn)
    nodes_ = tuple(node_values.values())
    replicas_ = tuple(replica_values.values())
    previous = last.state
    if nodes_ == previous.nodes and replicas_ == previous.replicas and records == previous.scheduling:
        state = previous  # nothing changed: the same value, with what it already computed
    else:
        state = ObservedState(nodes=nodes_, replicas=replicas_, scheduling=records)
    if cache is not None:
        cache.keep(_Built(node_values, replica_values, state))
    return state


def _nodes(conn: Connection, known: Mapping[NodeKey, ObservedNode]) -> dict[NodeKey, ObservedNode]:
    labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for node, key, value in conn.execute(
        select(node_labels.c.node, node_labels.c.key, node_labels.c.value).order_by(
            node_labels.c.node, node_labels.c.key
        )
    ).all():
        labels[node].append((key, value))
    backends: dict[str, list[str]] = defaultdict(list)
    for node, backend in conn.execute(
        select(node_backends.c.node, node_backends.c.backend)
        .where(node_backends.c.state == "installed")
        .order_by(node_backends.c.node, node_backends.c.backend)
    ).all():
        backends[node].append(backend)
    rows = conn.execute(
        select(
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
    ).all()
    built: dict[NodeKey, ObservedNode] = {}
    for row in rows:
        key = (tuple(row), tuple(labels.get(row[0], ())), tuple(backends.get(row[0], ())))
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


def _replicas(
    conn: Connection, known: Mapping[tuple[Any, ...], ObservedReplica]
) -> dict[tuple[Any, ...], ObservedReplica]:
    rows = conn.execute(
        select(
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
    ).all()
    built: dict[tuple[Any, ...], ObservedReplica] = {}
    for row in rows:
        key = tuple(row)
        value = known.get(key)
        built[key] = value if value is not None else _replica(key)
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
    rows = conn.execute(
        select(
            scheduling_state.c.instance,
            scheduling_state.c.unsatisfiable_ticks,
            scheduling_state.c.cooldown_until_ms,
            scheduling_state.c.capacity_digest,
        ).order_by(scheduling_state.c.instance)
    ).all()
    return tuple(
        SchedulingRecord(
            instance=instance, unsatisfiable_ticks=ticks, cooldown_until=_iso(until), capacity=capacity
        )
        for instance, ticks, until, capacity in rows
    )


def _iso(ms: int | None) -> str | None:
    return iso_from_ms(ms) if ms is not None else None
