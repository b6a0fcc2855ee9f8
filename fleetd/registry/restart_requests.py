"""Restart requests on replica rows (``fleetd replica restart``): a person's request, recorded as state so the
planner sees it (``ObservedReplica.restart_requested``) whichever controller leads, and cleared by the restart
step that carries it out. A request is not fenced: like an approval, it is an input, not a controller's act."""

from __future__ import annotations

from sqlalchemy import Connection, and_, select, update

from fleetd.registry.facade import Registry
from fleetd.registry.tables import replicas


def request(registry: Registry, instance: str, index: int | None) -> tuple[tuple[str, int], ...]:
    """Mark the instance's replicas (or replica ``index``) for a restart; returns the (node, index) marked."""
    where = replicas.c.instance == instance
    if index is not None:
        where = and_(where, replicas.c.replica == index)
    with registry.engine.begin() as conn:
        rows = conn.execute(select(replicas.c.node, replicas.c.replica).where(where)).all()
        conn.execute(update(replicas).where(where).values(restart_requested_ms=registry.clock()))
    return tuple(sorted((node, replica) for node, replica in rows))


def clear(conn: Connection, instance: str, node: str, replica: int) -> None:
    """The restart that carries the request out has begun: the request is done, whatever its outcome (a
    failing restart must not repeat on every cycle)."""
    conn.execute(
        update(replicas)
        .where(and_(replicas.c.instance == instance, replicas.c.node == node, replicas.c.replica == replica))
        .values(restart_requested_ms=None)
    )
