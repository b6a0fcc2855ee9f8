"""The ``controller`` lease: one controller changes the fleet at a time (DESIGN.md section 3).

Why a lease and not a lock file: the registry may be PostgreSQL shared by several machines, a killed controller
must not leave a lock that someone has to break by hand (LESSONS.md: Terraform's stale locks), and the lease's
fencing epoch goes to the executor, whose writes stop the moment another controller takes over.

Two holders, one renewal: ``Leadership`` is ``fleetd serve``'s (it renews while leading and tries to take the
lease while not, and says when that changes); ``held`` is a one-shot command's (``apply``, ``status``): it
waits for the lease up to a timeout, renews it while the command runs, and releases it. Both renew every third
of the TTL through ``_renew``, where a registry error is a missed renewal, not a crash.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from fleetd.executing.fencing import Fence
from fleetd.registry import leases
from fleetd.registry.facade import Registry

CONTROLLER_LEASE = "controller"
DEFAULT_TTL_MS = 30_000
POLL_S = 0.25
"""How often a waiting one-shot command tries the lease again."""


class LeaseStore(Protocol):
    """The registry's lease calls (``fleetd.registry.facade.Registry`` is one)."""

    def acquire_lease(self, name: str, holder: str, *, ttl_ms: int) -> int | None: ...

    def renew_lease(self, name: str, holder: str, epoch: int, *, ttl_ms: int) -> bool: ...

    def release_lease(self, name: str, holder: str, epoch: int) -> bool: ...


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


def _renew(store: LeaseStore, fence: Fence, ttl_ms: int) -> bool | None:
    """Renew the lease: ``True`` renewed, ``False`` taken over or expired, ``None`` the registry did not answer
    (try again; the fence stops our writes if the lease runs out meanwhile)."""
    try:
        return store.renew_lease(fence.lease, fence.holder, fence.epoch, ttl_ms=ttl_ms)
    except SQLAlchemyError:
        return None


def _release(store: LeaseStore, fence: Fence) -> None:
    with contextlib.suppress(SQLAlchemyError):  # an unreleased lease simply expires after its TTL
        store.release_lease(fence.lease, fence.holder, fence.epoch)


# one-shot commands --------------------------------------------------------------------------------------------


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

    def renew_loop() -> None:
        while not stop.wait(held.ttl_ms / 3000):
            if _renew(registry, held.fence, held.ttl_ms) is False:
                held.lost.set()
                return

    thread = threading.Thread(target=renew_loop, name=f"fleetd-lease-{held.fence.lease}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        _release(registry, held.fence)


@contextlib.contextmanager
def held(registry: Registry, role: str, *, timeout_s: float) -> Iterator[HeldLease]:
    """The controller lease for one command: taken (waiting up to ``timeout_s``; ``LockBusy`` names the
    holder), renewed while the block runs, released at its end."""
    lease = acquire(registry, holder_id(role), timeout_s=timeout_s)
    with renewed(registry, lease):
        yield lease


# fleetd serve ------------------------------------------------------------------------------------------------


class Leadership:
    """Whether this controller leads, kept true by a renewing thread; ``on_change`` runs after each change.

    Several controllers may run against one registry; only the holder of the lease runs cycles, and it passes
    its ``Fence`` to the executor so that a controller deposed mid-apply cannot write over its successor's work.
    When a renewal fails the controller stops leading at once and goes back to trying to acquire the lease.
    """

    def __init__(
        self, store: LeaseStore, holder: str, *, ttl_ms: int, on_change: Callable[[Fence | None], None]
    ) -> None:
        self._store = store
        self._holder = holder
        self._ttl_ms = ttl_ms
        self._on_change = on_change
        self._fence: Fence | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetd-lease", daemon=True)
        self.registry_answered = False
        """Whether the last lease call reached the registry (for ``/readyz``)."""

    @property
    def holder(self) -> str:
        return self._holder

    @property
    def fence(self) -> Fence | None:
        """The current fence while leading, else ``None``."""
        with self._lock:
            return self._fence

    def start(self) -> None:
        self.tick()
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the lease up, so a follower takes over without waiting for the TTL."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        fence = self._set(None)
        if fence is not None:
            _release(self._store, fence)

    def tick(self) -> None:
        """Renew the lease while leading; otherwise (or when renewal failed) try to take it."""
        fence = self.fence
        if fence is not None:
            renewed_now = _renew(self._store, fence, self._ttl_ms)
            self.registry_answered = renewed_now is not None
            if renewed_now:
                return
            self._set(None)
        try:
            epoch = self._store.acquire_lease(CONTROLLER_LEASE, self._holder, ttl_ms=self._ttl_ms)
        except SQLAlchemyError:
            self.registry_answered = False
            return
        self.registry_answered = True
        if epoch:
            self._set(Fence(CONTROLLER_LEASE, self._holder, int(epoch)))

    def _set(self, fence: Fence | None) -> Fence | None:
        with self._lock:
            before, self._fence = self._fence, fence
        if before != fence:
            self._on_change(fence)
        return before

    def _run(self) -> None:
        interval_s = self._ttl_ms / 3000
        while not self._stop.wait(interval_s):
            self.tick()


def _seconds(ms: int) -> int:
    return max(0, -(-ms // 1000))
