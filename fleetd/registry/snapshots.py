"""``snapshot(conn) -> ObservedState``: the registry as the planner sees it, in five queries whatever its size.

One query per table (nodes, labels, installed backends, replicas, scheduling records), grouped in Python; no
query per node or replica (no N+1). Run it in a read-only transaction so that every part is of one moment.
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
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas, scheduling_state


def snapshot(conn: Connection) -> ObservedState:
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
    node_rows = conn.execute(
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
        ).order_by(nodes.c.name)
    )
    observed_nodes = tuple(
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
        ) in node_rows
    )
    replica_rows = conn.execute(
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
        ).order_by(replicas.c.instance, replicas.c.node, replicas.c.replica)
    )
    observed_replicas = tuple(
        ObservedReplica(
            instance=instance,
            node=node,
            replica=index,
            state=ReplicaState(state),
            address=address,
            config_hash=config_hash,
            vram_bytes=vram,
            in_flight=in_flight,
            last_used=iso_from_ms(last_used) if last_used is not None else None,
            restarts=restarts,
            last_error=last_error,
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
        ) in replica_rows
    )
    records = tuple(
        SchedulingRecord(
            instance=instance,
            unsatisfiable_ticks=ticks,
            cooldown_until=iso_from_ms(until) if until is not None else None,
            capacity=capacity,
        )
        for instance, ticks, until, capacity in conn.execute(
            select(
                scheduling_state.c.instance,
                scheduling_state.c.unsatisfiable_ticks,
                scheduling_state.c.cooldown_until_ms,
                scheduling_state.c.capacity_digest,
            ).order_by(scheduling_state.c.instance)
        )
    )
    return ObservedState(nodes=observed_nodes, replicas=observed_replicas, scheduling=records)
