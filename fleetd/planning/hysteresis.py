"""Unsatisfiable hysteresis: an instance that cannot be placed several cycles in a row cools down.

Without it, a fleet short of capacity re-attempts the same doomed placements every tick (LocalAI #9583 reloaded
a model every 30 s until VRAM fragmented). Each failed cycle adds a tick; at ``ticks`` the instance enters a
cooldown during which no placement is attempted (the plan reports ``cooldown`` beside the reasons of the last
attempt, which the record keeps). The cooldown ends when it
expires or as soon as the fleet's placement structure changes: a node appears, is approved, is relabelled or
gets other slots. Free VRAM is not part of that structure (it moves with every heartbeat); the expiry covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.core.observed import ObservedState, SchedulingRecord
from fleetd.core.timestamps import iso_from_ms, ms_from_iso


@dataclass(frozen=True, slots=True)
class HysteresisPolicy:
    ticks: int = 3
    """Consecutive failed cycles before the cooldown starts."""
    cooldown_ms: int = 300_000


def capacity_digest(observed: ObservedState) -> str:
    """The placement structure's digest (once per snapshot, independent of node order)."""
    return observed.placement_digest


def cooling_down(record: SchedulingRecord | None, *, now_ms: int, capacity: str) -> bool:
    """True while the record's cooldown runs and the placement structure is what it was."""
    if record is None or record.cooldown_until is None or record.capacity != capacity:
        return False
    return now_ms < ms_from_iso(record.cooldown_until)


def next_record(
    record: SchedulingRecord | None,
    instance: str,
    *,
    failed: bool,
    now_ms: int,
    capacity: str,
    policy: HysteresisPolicy,
    reasons: tuple[tuple[str, int], ...] = (),
) -> SchedulingRecord | None:
    """The record to keep after this cycle; ``None`` once the instance is fully placed. ``reasons``: why this
    cycle's placement failed, kept in the record for the plans made during the cooldown."""
    if not failed:
        return None
    if cooling_down(record, now_ms=now_ms, capacity=capacity):
        return record
    ticks = 1 if record is None or record.capacity != capacity else record.unsatisfiable_ticks + 1
    until = iso_from_ms(now_ms + policy.cooldown_ms) if ticks >= policy.ticks else None
    return SchedulingRecord(instance, ticks, until, capacity, reasons)


def cooldown_reasons(record: SchedulingRecord) -> tuple[tuple[str, int], ...]:
    """What a plan says of an instance in cooldown: the reasons its last attempt failed, and ``cooldown``."""
    return tuple(sorted({**dict(record.reasons), "cooldown": 0}.items()))
