"""Scheduling records: the planner's hysteresis, persisted between reconcile cycles.

The planner returns the records it wants kept (``Plan.scheduling``); ``save`` makes the table exactly that
set, so an instance that became placeable, or was removed, loses its record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, delete

from fleetd.core.observed import SchedulingRecord
from fleetd.core.timestamps import ms_from_iso
from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import scheduling_state


def save(conn: Connection, records: Sequence[SchedulingRecord], *, now_ms: int) -> None:
    names = [r.instance for r in records]
    conn.execute(
        delete(scheduling_state).where(scheduling_state.c.instance.not_in(names))
        if names
        else delete(scheduling_state)
    )
    for record in records:
        values = {
            "unsatisfiable_ticks": record.unsatisfiable_ticks,
            "cooldown_until_ms": ms_from_iso(record.cooldown_until) if record.cooldown_until else None,
            "capacity_digest": record.capacity,
            "updated_ms": now_ms,
            "reasons": json.dumps([list(pair) for pair in record.reasons]) if record.reasons else None,
        }
        stmt = insert_for(conn, scheduling_state).values(instance=record.instance, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["instance"], set_=values))
