"""The controller lock of one-shot commands: ``fleetd apply`` holds the ``controller`` lease while it changes the
fleet, so that one controller applies at a time (DESIGN.md section 3).

Why a lease and not a lock file: the registry may be PostgreSQL shared by several machines, a killed apply must
not leave a lock that someone has to break by hand (LESSONS.md: Terraform's stale locks), and the lease's
fencing epoch goes to the executor, whose writes stop the moment another controller takes over. While the work
runs, a background thread renews the lease every third of its TTL; a renewal that fails marks the lease lost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from fleetd.executing.fencing import Fence
from fleetd.registry import leases
from fleetd.registry.facade import Registry

CONTROLLER_LEASE = "controller"
DEFAULT_TTL_MS = 30_000
POLL_S = 0.25
"""How often a waiting controller tries the lease again."""


class LockBusy(Exception):
    """Another holder kept the lease for the whole wait."""

    def __init__(self, name: str, holder: str | None, expires_in_ms: int | None) -> None:
        self.name = name
        self.holder = holder
        self.expires_in_ms = expires_in_ms
        if holder is None or expires_in_ms is None:
            text = f"the {name!r} lease stayed taken"
        else:
            text = f"another fleetd ({holder}) is applying; its lease expires in {_seconds(expires_in_ms)} s"
        super().__init__(text)


@dataclass(frozen=True)
class HeldLease:
    """A lease this process holds; ``lost`` is set when a renewal found it taken over or expired."""

    fence: Fence
    ttl_ms: int
    lost: threading.Event = field(default_factory=threading.Event, compare=False)


def holder_id(role: str) -> str:
    """``apply:<hostname>:<pid>``: who holds a lease, readable in a "who is applying" message."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def acquire(
    registry: Registry,
    holder: str,
    *,
    timeout_s: float,
    name: str = CONTROLLER_LEASE,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> HeldLease:
    """Take the lease, trying again until ``timeout_s`` has passed; raises ``LockBusy`` naming the holder."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        epoch = registry.acquire_lease(name, holder, ttl_ms=ttl_ms)
        if epoch is not None:
            return HeldLease(Fence(name, holder, epoch), ttl_ms)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            with registry.engine.connect() as conn:
                other = leases.held_by_other(conn, name, holder, now_ms=registry.clock())
            if other is None:  # it expired or was released just now: one more try
                epoch = registry.acquire_lease(name, holder, ttl_ms=ttl_ms)
                if epoch is not None:
                    return HeldLease(Fence(name, holder, epoch), ttl_ms)
                raise LockBusy(name, None, None)
            raise LockBusy(name, other.holder, other.expires_ms - registry.clock())
        time.sleep(min(POLL_S, remaining))  # waiting for another process's lease, not for one of ours


@contextlib.contextmanager
def renewed(registry: Registry, held: HeldLease) -> Iterator[HeldLease]:
    """Renew ``held`` every ttl/3 on a daemon thread while the block runs, then release it (even on error)."""
    stop = threading.Event()
    fence = held.fence

    def renew_loop() -> None:
        while not stop.wait(held.ttl_ms / 3000):
            try:
                still = registry.renew_lease(fence.lease, fence.holder, fence.epoch, ttl_ms=held.ttl_ms)
            except SQLAlchemyError:
                continue  # a database hiccup: try again; the fence stops our writes if the lease runs out
            if not still:
                held.lost.set()
                return

    thread = threading.Thread(target=renew_loop, name=f"fleetd-lease-{fence.lease}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(SQLAlchemyError):  # an unreleased lease simply expires after its TTL
            registry.release_lease(fence.lease, fence.holder, fence.epoch)


def _seconds(ms: int) -> int:
    return max(0, -(-ms // 1000))
