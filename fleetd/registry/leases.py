"""Leases with fencing epochs: one controller leads at a time, and a deposed one cannot write.

``acquire`` returns an epoch that grows by one at every change of hands (or re-acquisition after expiry).
Writes that only the leader may make call ``fence`` in their transaction: it matches the lease row on its
epoch (a no-op ``UPDATE`` that on PostgreSQL also locks the row until commit, so a takeover cannot slip in
between the check and the write) and raises ``FencedOut`` when a newer epoch exists. A crashed holder's
lease simply expires (Terraform's stale-lock problem, designed out with a TTL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Connection, and_, select, update

from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import leases

_ROLE = re.compile(r"^[a-z][a-z-]*$")


class FencedOut(RuntimeError):
    """A write carried an epoch older than the lease's: another holder took over."""


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    name: str
    holder: str
    epoch: int
    expires_ms: int


def acquire(conn: Connection, name: str, holder: str, *, ttl_ms: int, now_ms: int) -> int | None:
    """Take or keep the lease; returns the epoch, or ``None`` while another holder's lease is unexpired.

    The holder that still holds an unexpired lease keeps its epoch (and extends it); anyone taking an expired
    or released lease gets the next epoch.
    """
    inserted = conn.execute(
        insert_for(conn, leases)
        .values(name=name, holder=holder, epoch=1, acquired_ms=now_ms, expires_ms=now_ms + ttl_ms)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(leases.c.epoch)
    ).first()
    if inserted is not None:
        return int(inserted.epoch)
    kept = conn.execute(
        update(leases)
        .where(and_(leases.c.name == name, leases.c.holder == holder, leases.c.expires_ms > now_ms))
        .values(expires_ms=now_ms + ttl_ms)
        .returning(leases.c.epoch)
    ).first()
    if kept is not None:
        return int(kept.epoch)
    taken = conn.execute(
        update(leases)
        .where(and_(leases.c.name == name, leases.c.expires_ms <= now_ms))
        .values(holder=holder, epoch=leases.c.epoch + 1, acquired_ms=now_ms, expires_ms=now_ms + ttl_ms)
        .returning(leases.c.epoch)
    ).first()
    return int(taken.epoch) if taken is not None else None


def renew(conn: Connection, name: str, holder: str, epoch: int, *, ttl_ms: int, now_ms: int) -> bool:
    """Extend a lease still held (same holder, same epoch, not expired)."""
    result = conn.execute(
        update(leases)
        .where(
            and_(
                leases.c.name == name,
                leases.c.holder == holder,
                leases.c.epoch == epoch,
                leases.c.expires_ms > now_ms,
            )
        )
        .values(expires_ms=now_ms + ttl_ms)
    )
    return result.rowcount == 1


def release(conn: Connection, name: str, holder: str, epoch: int) -> bool:
    """Give the lease up at once (on graceful shutdown) so a follower need not wait for the TTL."""
    result = conn.execute(
        update(leases)
        .where(and_(leases.c.name == name, leases.c.holder == holder, leases.c.epoch == epoch))
        .values(expires_ms=0)
    )
    return result.rowcount == 1


def fence(conn: Connection, name: str, epoch: int) -> None:
    """Raise ``FencedOut`` unless ``epoch`` is still the lease's epoch. Call it inside the writing transaction."""
    result = conn.execute(
        update(leases).where(and_(leases.c.name == name, leases.c.epoch == epoch)).values(epoch=leases.c.epoch)
    )
    if result.rowcount != 1:
        current = conn.execute(select(leases.c.epoch, leases.c.holder).where(leases.c.name == name)).first()
        held = f"epoch {current.epoch} held by {current.holder!r}" if current else "no lease"
        raise FencedOut(f"lease {name!r}: this writer's epoch {epoch} is stale ({held})")


def current(conn: Connection, name: str) -> LeaseInfo | None:
    row = conn.execute(select(leases).where(leases.c.name == name)).first()
    if row is None:
        return None
    return LeaseInfo(row.name, row.holder, int(row.epoch), int(row.expires_ms))


def held_by_other(conn: Connection, name: str, holder: str, *, now_ms: int) -> LeaseInfo | None:
    """The unexpired lease of someone else, if any (for "waiting for the lock held by X" messages)."""
    row = conn.execute(
        select(leases).where(and_(leases.c.name == name, leases.c.expires_ms > now_ms, leases.c.holder != holder))
    ).first()
    return LeaseInfo(row.name, row.holder, int(row.epoch), int(row.expires_ms)) if row is not None else None


def parse_holder(holder: str) -> tuple[str, str, int] | None:
    """(role, host, pid) of a holder id that ``leadership.holder_id`` made (``role:host:pid``); ``None`` for any
    other id."""
    role, _, rest = holder.partition(":")
    host, _, pid = rest.rpartition(":")
    if not _ROLE.match(role) or not host or not pid.isdigit():
        return None
    return role, host, int(pid)


def describe_holder(holder: str, epoch: int | None = None) -> str:
    """``fleetd serve (pid 1234 on host-a, lease epoch 7)`` for ``serve:host-a:1234``; an id that
    ``leadership.holder_id`` did not make is shown as it is: ``ci-job-4711 (lease epoch 7)``."""
    parsed = parse_holder(holder)
    details = [f"pid {parsed[2]} on {parsed[1]}"] if parsed is not None else []
    if epoch is not None:
        details.append(f"lease epoch {epoch}")
    who = f"fleetd {parsed[0]}" if parsed is not None else holder
    return f"{who} ({', '.join(details)})" if details else who
