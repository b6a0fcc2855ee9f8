"""The applied instances: the desired state fleetd last applied, with each instance's config hash and revision.

Only the leader writes here, so ``sync`` is fenced by the controller lease's epoch when one is given.
Secrets never reach the database in clear: environment values are stored as written in the manifest, where
secrets are ``${env:NAME}`` references, resolved only in the agent at process start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, delete, select

from fleetd.core.desired import InstanceSpec
from fleetd.registry import leases
from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import instances

CONTROLLER_LEASE = "controller"


def sync(
    conn: Connection,
    specs: Sequence[InstanceSpec],
    config_hashes: Mapping[str, str],
    *,
    revision: str | None,
    now_ms: int,
    epoch: int | None = None,
) -> None:
    """Make the instances table exactly ``specs`` (upsert, delete the rest). Fenced when ``epoch`` is given."""
    if epoch is not None:
        leases.fence(conn, CONTROLLER_LEASE, epoch)
    names = [s.name for s in specs]
    conn.execute(delete(instances).where(instances.c.name.not_in(names)) if names else delete(instances))
    for spec in specs:
        values = _row(spec, config_hashes[spec.name], revision, now_ms)
        stmt = insert_for(conn, instances).values(name=spec.name, created_ms=now_ms, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))


def applied(conn: Connection) -> dict[str, dict[str, Any]]:
    """The applied rows by instance name (for status and drift reports)."""
    return {row.name: dict(row._mapping) for row in conn.execute(select(instances).order_by(instances.c.name))}


def _row(spec: InstanceSpec, config_hash: str, revision: str | None, now_ms: int) -> dict[str, Any]:
    s = spec.scheduling
    return {
        "backend": spec.backend,
        "model": spec.model,
        "options": dict(spec.options),
        "vram_bytes": spec.vram_bytes,
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "node_selector": dict(s.node_selector),
        "allowed_nodes": list(s.nodes) if s.nodes is not None else None,
        "priority": s.priority,
        "route_policy": s.route_policy.value,
        "placement": spec.placement.value,
        "auto_restart": spec.restart.auto_restart,
        "max_restarts": spec.restart.max_restarts,
        "restart_delay_ms": spec.restart.restart_delay_ms,
        "restart_max_delay_ms": spec.restart.restart_max_delay_ms,
        "health": asdict(spec.health),
        "rollout": asdict(spec.rollout),
        "on_demand_start": spec.on_demand_start,
        "idle_timeout_ms": spec.idle_timeout_ms,
        "docker_enabled": spec.docker_enabled,
        "command_override": list(spec.command_override) if spec.command_override is not None else None,
        "environment": {key: value.template for key, value in spec.environment},
        "config_hash": config_hash,
        "applied_revision": revision,
        "updated_ms": now_ms,
    }
