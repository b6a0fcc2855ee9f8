"""Node lifecycle in the registry: register, approve, heartbeat (batched), status marks, labels, backends.

Status flow: a new node is ``pending`` until approved (by the manifest's ``approved: true`` through an
``approve_node`` action, or by a person); an approved node that heartbeats is ``healthy``; missed heartbeats
make it ``unhealthy`` and later ``offline``; one heartbeat brings it back. A heartbeat refreshes the readings
(free VRAM and RAM) and never touches ``reserved_vram``: reservations belong to their operations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, case, delete, func, select, text, update

from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.core.observed import NodeStatus
from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas

GIB = 1024**3
LIVE_STATUSES = (NodeStatus.HEALTHY.value, NodeStatus.UNHEALTHY.value, NodeStatus.OFFLINE.value)


class UnknownNode(LookupError):
    """The node is not registered."""


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What an agent reports about its machine."""

    gpu_vendor: str = "none"
    total_vram: int = 0
    available_vram: int = 0
    total_ram: int = 0
    available_ram: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One node's periodic reading."""

    node: str
    available_vram: int
    available_ram: int
    at_ms: int | None = None
    """When the reading arrived (default: when it is written). Liveness counts from it, so a controller behind on
    its writes does not make a silent node look fresher than it is; it never moves backwards."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as a person lists it (``fleetd node list``): what the planner's snapshot leaves out included."""

    name: str
    status: NodeStatus
    approved: bool
    address: str | None
    gpu_vendor: str
    total_vram: int
    available_vram: int
    total_ram: int
    available_ram: int
    last_heartbeat_ms: int | None
    last_error: str | None
    replicas: int
    """How many replica rows name this node."""


def register(
    conn: Connection,
    name: str,
    facts: NodeFacts,
    *,
    now_ms: int,
    address: str | None = None,
    token_hash: str | None = None,
    max_replicas_per_model: int = 1,
) -> NodeStatus:
    """Insert or refresh a node. A new node is ``pending``; a known one keeps its approval and status."""
    values = {
        "address": address,
        "gpu_vendor": facts.gpu_vendor,
        "total_vram": facts.total_vram,
        "available_vram": facts.available_vram,
        "total_ram": facts.total_ram,
        "available_ram": facts.available_ram,
        "last_heartbeat_ms": now_ms,
        "updated_ms": now_ms,
    }
    if token_hash is not None:
        values["token_hash"] = token_hash
    stmt = insert_for(conn, nodes).values(
        name=name,
        status=NodeStatus.PENDING.value,
        approved=False,
        reserved_vram=0,
        max_replicas_per_model=max_replicas_per_model,
        registered_ms=now_ms,
        token_hash=token_hash,
        **{k: v for k, v in values.items() if k != "token_hash"},
    )
    conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))
    status, slots = conn.execute(
        select(nodes.c.status, nodes.c.max_replicas_per_model).where(nodes.c.name == name)
    ).one()
    _write_auto_labels(conn, name, facts, slots)
    return NodeStatus(status)


def set_max_replicas_per_model(conn: Connection, name: str, slots: int, *, now_ms: int) -> None:
    """The manifest's ``max_replicas_per_model`` for a node, mirrored in its ``node.replica-slots`` label."""
    result = conn.execute(
        update(nodes).where(nodes.c.name == name).values(max_replicas_per_model=slots, updated_ms=now_ms)
    )
    if result.rowcount == 0:
        raise UnknownNode(name)
    conn.execute(
        update(node_labels)
        .where(and_(node_labels.c.node == name, node_labels.c.key == "node.replica-slots"))
        .values(value=str(slots))
    )


def approve(conn: Connection, name: str, *, now_ms: int) -> None:
    """Approve a node; a pending one becomes healthy (it registered, so it is alive)."""
    result = conn.execute(update(nodes).where(nodes.c.name == name).values(approved=True, updated_ms=now_ms))
    if result.rowcount == 0:
        raise UnknownNode(name)
    conn.execute(
        update(nodes)
        .where(and_(nodes.c.name == name, nodes.c.status == NodeStatus.PENDING.value))
        .values(status=NodeStatus.HEALTHY.value)
    )


_RECOVER = (
    "CASE WHEN nodes.approved AND nodes.status IN ('unhealthy', 'offline') AND nodes.last_error IS NULL "
    "THEN 'healthy' ELSE nodes.status END"
)
_BEATS_POSTGRESQL = "json_to_recordset(CAST(:beats AS json)) AS b(name text, vram bigint, ram bigint, at bigint)"
_HEARTBEAT_POSTGRESQL = text(
    "UPDATE nodes SET available_vram = b.vram, available_ram = b.ram, "
    "last_heartbeat_ms = GREATEST(COALESCE(nodes.last_heartbeat_ms, 0), b.at), "
    f"updated_ms = :now, status = {_RECOVER} FROM {_BEATS_POSTGRESQL} WHERE nodes.name = b.name"
)
_LOCK_POSTGRESQL = text(
    f"SELECT name FROM nodes WHERE name IN (SELECT b.name FROM {_BEATS_POSTGRESQL}) ORDER BY name FOR UPDATE"
)
_HEARTBEAT_SQLITE = (
    "UPDATE nodes SET available_vram = ?, available_ram = ?, last_heartbeat_ms = MAX(COALESCE(last_heartbeat_ms, 0), ?), "
    "updated_ms = ?, "
    f"status = {_RECOVER} WHERE name = ?"
)


def heartbeat(conn: Connection, beats: Sequence[Heartbeat], *, now_ms: int) -> None:
    """Record readings of many nodes in one statement; unhealthy/offline approved nodes recover (healthy), unless
    the controller could not reach their agent (``last_error``: their heartbeats arrive, their gRPC path fails;
    ``clear_error`` ends that).

    Written without an ORM row per node (a controller writes thousands a second): on PostgreSQL one ``UPDATE …
    FROM json_to_recordset(…)`` of one JSON parameter (psycopg dumps a text array element by element, in Python,
    at ~10 µs each), on SQLite one ``executemany`` of plain tuples. The rows are locked in
    node-name order whatever order the batch came in, so two controllers writing overlapping batches at once,
    and the missed-heartbeat sweep, lock them in the same order and cannot deadlock (on PostgreSQL).
    """
    if not beats:
        return
    beats = sorted(beats, key=lambda b: b.node)
    if conn.dialect.name == "postgresql":
        rows = json.dumps(
            [
                {"name": b.node, "vram": b.available_vram, "ram": b.available_ram, "at": b.at_ms or now_ms}
                for b in beats
            ]
        )
        conn.execute(_LOCK_POSTGRESQL, {"beats": rows})
        conn.execute(_HEARTBEAT_POSTGRESQL, {"beats": rows, "now": now_ms})
        return
    conn.exec_driver_sql(
        _HEARTBEAT_SQLITE, [(b.available_vram, b.available_ram, b.at_ms or now_ms, now_ms, b.node) for b in beats]
    )


def clear_error(conn: Connection, name: str, *, now_ms: int) -> None:
    """The node's agent answers again: forget why it did not, and an unhealthy approved node is healthy (a silent
    one is made unhealthy again by the next sweep)."""
    result = conn.execute(
        update(nodes)
        .where(and_(nodes.c.name == name, nodes.c.last_error.is_not(None)))
        .values(last_error=None, updated_ms=now_ms)
    )
    if result.rowcount:
        conn.execute(
            update(nodes)
            .where(
                and_(
                    nodes.c.name == name,
                    nodes.c.approved.is_(True),
                    nodes.c.status == NodeStatus.UNHEALTHY.value,
                )
            )
            .values(status=NodeStatus.HEALTHY.value)
        )


def mark_unreachable(conn: Connection, name: str, error: str, *, now_ms: int) -> bool:
    """The node's agent did not answer: keep why (``fleetd status`` shows it) and make a healthy node
    ``unhealthy`` at once, so nothing new is placed there. Its replicas are not touched: they may well still be
    serving, and only a node silent past the offline threshold has them re-placed. False for an unknown node."""
    result = conn.execute(
        update(nodes).where(nodes.c.name == name).values(last_error=error[:2000], updated_ms=now_ms)
    )
    conn.execute(
        update(nodes)
        .where(and_(nodes.c.name == name, nodes.c.status == NodeStatus.HEALTHY.value))
        .values(status=NodeStatus.UNHEALTHY.value)
    )
    return bool(result.rowcount)


def count_silent(conn: Connection, *, now_ms: int, silent_after_ms: int) -> tuple[int, int]:
    """(live nodes, live nodes silent for ``silent_after_ms``): live is healthy or unhealthy (the bus guard's
    denominator: a pending, draining or offline node does not vote)."""
    live_statuses = [NodeStatus.HEALTHY.value, NodeStatus.UNHEALTHY.value]
    live = conn.execute(
        select(func.count()).select_from(nodes).where(nodes.c.status.in_(live_statuses))
    ).scalar_one()
    silent = conn.execute(
        select(func.count())
        .select_from(nodes)
        .where(and_(nodes.c.status.in_(live_statuses), nodes.c.last_heartbeat_ms < now_ms - silent_after_ms))
    ).scalar_one()
    return int(live), int(silent)


def mark_missed_heartbeats(
    conn: Connection, *, now_ms: int, unhealthy_after_ms: int, offline_after_ms: int
) -> tuple[int, int]:
    """Healthy nodes silent for ``unhealthy_after_ms`` become unhealthy; any live node silent for
    ``offline_after_ms`` becomes offline. Returns (newly unhealthy, newly offline).

    The rows concerned are locked first in node-name order, the order heartbeats use, so this sweep and a
    concurrent heartbeat batch cannot deadlock on PostgreSQL.
    """
    silent = conn.execute(
        select(nodes.c.name)
        .where(
            and_(
                nodes.c.status.in_([NodeStatus.HEALTHY.value, NodeStatus.UNHEALTHY.value]),
                nodes.c.last_heartbeat_ms < now_ms - unhealthy_after_ms,
            )
        )
        .order_by(nodes.c.name)
        .with_for_update()
    ).all()
    if not silent:
        return 0, 0
    unhealthy = conn.execute(
        update(nodes)
        .where(
            and_(
                nodes.c.status == NodeStatus.HEALTHY.value,
                nodes.c.last_heartbeat_ms < now_ms - unhealthy_after_ms,
                nodes.c.last_heartbeat_ms >= now_ms - offline_after_ms,
            )
        )
        .values(status=NodeStatus.UNHEALTHY.value, updated_ms=now_ms)
    ).rowcount
    offline = conn.execute(
        update(nodes)
        .where(
            and_(
                nodes.c.status.in_([NodeStatus.HEALTHY.value, NodeStatus.UNHEALTHY.value]),
                nodes.c.last_heartbeat_ms < now_ms - offline_after_ms,
            )
        )
        .values(status=NodeStatus.OFFLINE.value, updated_ms=now_ms)
    ).rowcount
    return unhealthy, offline


def set_draining(conn: Connection, name: str, draining: bool, *, now_ms: int) -> None:
    """Draining stops new placements; undraining returns the node to healthy (the next missed heartbeat
    check demotes it again if it is silent)."""
    status = NodeStatus.DRAINING if draining else NodeStatus.HEALTHY
    result = conn.execute(update(nodes).where(nodes.c.name == name).values(status=status.value, updated_ms=now_ms))
    if result.rowcount == 0:
        raise UnknownNode(name)


def undrain(conn: Connection, name: str, *, now_ms: int) -> NodeStatus:
    """A draining node returns to ``healthy``, or to ``pending`` when it was never approved (the next missed
    heartbeat check demotes a silent one). Any other status is left alone. Returns the status after."""
    conn.execute(
        update(nodes)
        .where(and_(nodes.c.name == name, nodes.c.status == NodeStatus.DRAINING.value))
        .values(
            status=case((nodes.c.approved.is_(True), NodeStatus.HEALTHY.value), else_=NodeStatus.PENDING.value),
            updated_ms=now_ms,
        )
    )
    status = conn.execute(select(nodes.c.status).where(nodes.c.name == name)).scalar_one_or_none()
    if status is None:
        raise UnknownNode(name)
    return NodeStatus(status)


def lock(conn: Connection, name: str) -> tuple[NodeStatus, bool]:
    """The node's status and approval, its row locked until the transaction ends (on PostgreSQL; SQLite's
    write transactions are serial anyway). The lock also holds off a replica row being added for the node."""
    row = conn.execute(
        select(nodes.c.status, nodes.c.approved).where(nodes.c.name == name).with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownNode(name)
    return NodeStatus(row.status), bool(row.approved)


def records(conn: Connection) -> tuple[NodeRecord, ...]:
    """Every node by name, with its address, last heartbeat and number of replica rows (two queries)."""
    counted = conn.execute(select(replicas.c.node, func.count()).group_by(replicas.c.node))
    counts: dict[str, int] = dict(counted.all())
    rows = conn.execute(
        select(
            nodes.c.name,
            nodes.c.status,
            nodes.c.approved,
            nodes.c.address,
            nodes.c.gpu_vendor,
            nodes.c.total_vram,
            nodes.c.available_vram,
            nodes.c.total_ram,
            nodes.c.available_ram,
            nodes.c.last_heartbeat_ms,
            nodes.c.last_error,
        ).order_by(nodes.c.name)
    )
    return tuple(
        NodeRecord(
            name=r.name,
            status=NodeStatus(r.status),
            approved=bool(r.approved),
            address=r.address,
            gpu_vendor=r.gpu_vendor,
            total_vram=r.total_vram,
            available_vram=r.available_vram,
            total_ram=r.total_ram,
            available_ram=r.available_ram,
            last_heartbeat_ms=r.last_heartbeat_ms,
            last_error=r.last_error,
            replicas=counts.get(r.name, 0),
        )
        for r in rows
    )


def set_manifest_labels(conn: Connection, name: str, labels: Mapping[str, str]) -> None:
    """Make the node's manifest labels exactly ``labels``; auto labels stay as they are."""
    clash = sorted(set(labels) & AUTO_LABEL_KEYS)
    if clash:
        raise ValueError(f"labels {', '.join(clash)} are set by fleetd itself and cannot come from the manifest")
    conn.execute(delete(node_labels).where(and_(node_labels.c.node == name, node_labels.c.source == "manifest")))
    if labels:
        conn.execute(
            node_labels.insert(),
            [{"node": name, "key": k, "value": v, "source": "manifest"} for k, v in sorted(labels.items())],
        )


def auto_labels(name: str, facts: NodeFacts, max_replicas_per_model: int) -> dict[str, str]:
    """The labels fleetd sets from what a node reports (``gpu.vram`` rounded to the nearest GiB)."""
    return {
        "gpu.vendor": facts.gpu_vendor,
        "gpu.vram": f"{round(facts.total_vram / GIB)}GiB",
        "node.name": name,
        "node.replica-slots": str(max_replicas_per_model),
    }


def _write_auto_labels(conn: Connection, name: str, facts: NodeFacts, max_replicas_per_model: int) -> None:
    conn.execute(delete(node_labels).where(and_(node_labels.c.node == name, node_labels.c.source == "auto")))
    conn.execute(
        node_labels.insert(),
        [
            {"node": name, "key": k, "value": v, "source": "auto"}
            for k, v in auto_labels(name, facts, max_replicas_per_model).items()
        ],
    )


def set_backend_state(
    conn: Connection,
    node: str,
    backend: str,
    state: str,
    *,
    now_ms: int,
    version: str | None = None,
    error: str | None = None,
) -> None:
    """Record a backend install's state on a node: ``installing``, ``installed`` or ``failed``."""
    values = {"state": state, "version": version, "last_error": error, "updated_ms": now_ms}
    stmt = insert_for(conn, node_backends).values(node=node, backend=backend, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["node", "backend"], set_=values))


_BACKENDS_POSTGRESQL = text(
    "INSERT INTO node_backends (node, backend, state, version, last_error, updated_ms) "
    "SELECT p.node, p.backend, 'installed', NULL, NULL, CAST(:now AS bigint) "
    "FROM json_to_recordset(CAST(:rows AS json)) AS p(node text, backend text) "
    "ON CONFLICT (node, backend) DO UPDATE SET state = excluded.state, version = excluded.version, "
    "last_error = excluded.last_error, updated_ms = excluded.updated_ms"
)


def set_backends_installed(conn: Connection, pairs: Sequence[tuple[str, str]], *, now_ms: int) -> None:
    """``set_backend_state(node, backend, "installed")`` for many (node, backend) pairs in one statement (a
    controller seeing a fleet's heartbeats for the first time): one JSON parameter on PostgreSQL, one
    executemany elsewhere."""
    if not pairs:
        return
    if conn.dialect.name == "postgresql":
        rows = json.dumps([{"node": node, "backend": backend} for node, backend in sorted(pairs)])
        conn.execute(_BACKENDS_POSTGRESQL, {"rows": rows, "now": now_ms})
        return
    values = {"state": "installed", "version": None, "last_error": None, "updated_ms": now_ms}
    stmt = insert_for(conn, node_backends).values(
        node=bindparam("p_node"), backend=bindparam("p_backend"), **values
    )
    conn.execute(
        stmt.on_conflict_do_update(index_elements=["node", "backend"], set_=values),
        [{"p_node": node, "p_backend": backend} for node, backend in sorted(pairs)],
    )


def remove(conn: Connection, name: str) -> None:
    """Forget a node (its labels, backends, replicas and reservations go with it)."""
    conn.execute(delete(nodes).where(nodes.c.name == name))
