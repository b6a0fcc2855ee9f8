"""The apply log: one row per apply (manifest revision and digest, plan hash, actions with outcomes, who, when)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from fleetd.registry import leases
from fleetd.registry.tables import apply_log


@dataclass(frozen=True, slots=True)
class ApplyRecord:
    manifest_digest: str
    plan_hash: str
    actions: Sequence[dict[str, Any]]
    """Each action's id, kind and outcome (``ok``, ``failed: ...``, ``skipped``)."""
    outcome: str
    who: str
    started_ms: int
    finished_ms: int
    manifest_revision: str | None = None
    lease_epoch: int | None = None


def record(conn: Connection, entry: ApplyRecord, *, lease: str | None = None) -> int:
    """Append an apply; fenced by ``lease`` when the entry carries an epoch."""
    if lease is not None and entry.lease_epoch is not None:
        leases.fence(conn, lease, entry.lease_epoch)
    row_id: int = conn.execute(
        apply_log.insert()
        .values(
            manifest_revision=entry.manifest_revision,
            manifest_digest=entry.manifest_digest,
            plan_hash=entry.plan_hash,
            actions=list(entry.actions),
            outcome=entry.outcome,
            who=entry.who,
            lease_epoch=entry.lease_epoch,
            started_ms=entry.started_ms,
            finished_ms=entry.finished_ms,
        )
        .returning(apply_log.c.id)
    ).scalar_one()
    return row_id


def any_recorded(conn: Connection) -> bool:
    return conn.execute(select(apply_log.c.id).limit(1)).first() is not None


def recent(conn: Connection, limit: int = 20) -> list[ApplyRecord]:
    rows = conn.execute(select(apply_log).order_by(apply_log.c.id.desc()).limit(limit))
    return [
        ApplyRecord(
            manifest_digest=r.manifest_digest,
            plan_hash=r.plan_hash,
            actions=r.actions,
            outcome=r.outcome,
            who=r.who,
            started_ms=r.started_ms,
            finished_ms=r.finished_ms,
            manifest_revision=r.manifest_revision,
            lease_epoch=r.lease_epoch,
        )
        for r in rows
    ]
