"""What an agent reports, written to the registry: the first step of every observation (DESIGN.md section 3).

An agent is the truth about its own node: its readings become a heartbeat, its installed backends the node's
backend list, and its replicas the node's replica rows (a row the agent no longer reports is removed: the
process is gone). The controlling layer calls these for the embedded agent today and for each remote agent's
report in the distributed mode; nothing else writes observations.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, select

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
    now = registry.clock()
    with registry.engine.begin() as conn:
        seen = {(r.instance, r.replica) for r in records}
        for record in records:
            replicas.upsert(conn, record, now_ms=now)
        rows = conn.execute(
            select(replica_rows.c.instance, replica_rows.c.replica).where(replica_rows.c.node == node)
        ).all()
        for instance, index in rows:
            if (instance, index) not in seen:
                conn.execute(
                    delete(replica_rows).where(
                        and_(
                            replica_rows.c.node == node,
                            replica_rows.c.instance == instance,
                            replica_rows.c.replica == index,
                        )
                    )
                )
