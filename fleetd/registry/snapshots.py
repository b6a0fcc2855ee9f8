"""``snapshot(conn) -> ObservedState``: the registry as the planner sees it, in five queries whatever its size.

One query per table (nodes, labels, installed backends, replicas, scheduling records), grouped in Python; no
query per node or replica (no N+1). Run it in a read-only transaction so that every part is of one moment.
Timestamps are stored as integer milliseconds and shown as ISO 8601 UTC (``last_used``, ``state_since``,
``cooldown_until``).
"""

from __future__ import annotations

from collections import defaultdict

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
from fleetd.registry.replicas import tombstones
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas, scheduling_state


def snapshot(conn: Connection) -> ObservedState:
    return ObservedState(nodes=_nodes(conn), replicas=_replicas(conn), scheduling=_records(conn))


def _nodes(conn: Connection) -> tuple[ObservedNode, ...]:
    labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for node, key, value in conn.execute(
        select(node_labels.c.node, node_labels.c.key, node_labels.c.value).order_by(
            node_labels.c.node, node_labels.c.key
        )
    ):
        labels[node].append((key, value))
    backends: dict[str, list[str]] = defaultdict(list)
    for node, backend in conn.execute(
        select(node_backends.c.node, node_backends.c.backend)
        .where(node_backends.c.state == "installed")
        .order_by(node_backends.c.node, node_backends.c.backend)
    ):
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
    )
    return tuple(
        ObservedNode(
            name=name,
            status=NodeStatus(status),
            labels=tuple(labels.get(name, ())),
            gpu_vendor=vendor,
            total_vram=total_vram,
            available_vram=available_vram,
            reserved_vram=reserved_vram,
            total_ram=total_ram,
            available_ram=available_ram,
            max_replicas_per_model=slots,
            backends=tuple(backends.get(name, ())),
            approved=bool(approved),
            last_error=last_error,
        )
        for (
            name,
            status,
            vendor,
            total_vram,
            available_vram,
            reserved_vram,
            total_ram,
            available_ram,
            slots,
            approved,
            last_error,
        ) in rows
    )


def _replicas(conn: Connection) -> tuple[ObservedReplica, ...]:
    replaced = tombstones(conn)
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
    )
    return tuple(
        ObservedReplica(
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
            replaced=bool(replaced) and (instance, node, index) in replaced,
        )
        for (
            instance,
            node,
            index,
            state,
            address,
            config_hash,
            vram,
            in_flight,
            last_used,
            restarts,
            last_error,
            state_since,
            requested,
        ) in rows
    )


def _records(conn: Connection) -> tuple[SchedulingRecord, ...]:
    rows = conn.execute(
        select(
            scheduling_state.c.instance,
            scheduling_state.c.unsatisfiable_ticks,
            scheduling_state.c.cooldown_until_ms,
            scheduling_state.c.capacity_digest,
        ).order_by(scheduling_state.c.instance)
    )
    return tuple(
        SchedulingRecord(
            instance=instance, unsatisfiable_ticks=ticks, cooldown_until=_iso(until), capacity=capacity
        )
        for instance, ticks, until, capacity in rows
    )


def _iso(ms: int | None) -> str | None:
    return iso_from_ms(ms) if ms is not None else None
