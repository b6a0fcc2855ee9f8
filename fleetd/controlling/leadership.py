"""The ``controller`` lease: one controller changes the fleet at a time (architecture.md §3).

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
import re
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
_ROLE = re.compile(r"^[a-z][a-z-]*$")


class LeaseStore(Protocol):
    """The registry's lease calls (``fleetd.registry.facade.Registry`` is one)."""

    def acquire_lease(self, name: str, holder: str, *, ttl_ms: int) -> int | None: ...

    def renew_lease(self, name: str, holder: str, epoch: int, *, ttl_ms: int) -> bool: ...

    def release_lease(self, name: str, holder: str, epoch: int) -> bool: ...


_DOING = {
    "apply": "is applying",
    "status": "is reading the fleet's status",
    "replica-restart": "is restarting replicas",
}
"""What a one-shot command holding the lease is doing, by the role in its holder id."""


class LockBusy(Exception):
    """Another holder kept the lease for the whole wait, or is a ``serve``, which keeps it while it runs. The
    message names the holder as its id records it (role, host, pid) and the lease's epoch, and says what the
    holder does: only an ``apply`` "is applying"; a ``serve`` leads and applies its own manifest."""

    def __init__(self, name: str, holder: str | None, expires_in_ms: int | None, epoch: int | None = None) -> None:
        self.name = name
        self.holder = holder
        self.expires_in_ms = expires_in_ms
        self.epoch = epoch
        if holder is None or expires_in_ms is None:
            text = f"the {name!r} lease stayed taken"
        elif self.serve_leads:
            text = (
                f"{describe_holder(holder, epoch)} leads this fleet and applies the manifest itself: commit or "
                "edit the manifest it watches, or stop it to apply by hand"
            )
        else:
            role = parse_holder(holder)
            doing = _DOING.get(role[0], "") if role is not None else ""
            text = (
                f"{describe_holder(holder, epoch)} holds the {name} lease{' and ' + doing if doing else ''}; "
                f"the lease runs out in {_seconds(expires_in_ms)} s unless it is renewed"
            )
        super().__init__(text)

    @property
    def serve_leads(self) -> bool:
        """The holder is a ``fleetd serve``: it keeps the lease as long as it runs, so waiting is pointless."""
        return self.holder is not None and holder_role(self.holder) == "serve"


@dataclass(frozen=True)
class HeldLease:
    """A lease this process holds; ``lost`` is set when a renewal found it taken over or expired."""

    fence: Fence
    ttl_ms: int
    lost: threading.Event = field(default_factory=threading.Event, compare=False)


def holder_id(role: str) -> str:
    """``apply:<hostname>:<pid>``: who holds a lease (``describe_holder`` says it in words)."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def parse_holder(holder: str) -> tuple[str, str, int] | None:
    """(role, host, pid) of a holder id that ``holder_id`` made; ``None`` for any other id."""
    role, _, rest = holder.partition(":")
    host, _, pid = rest.rpartition(":")
    if not _ROLE.match(role) or not host or not pid.isdigit():
        return None
    return role, host, int(pid)


def holder_role(holder: str) -> str | None:
    parsed = parse_holder(holder)
    return parsed[0] if parsed is not None else None


def describe_holder(holder: str, epoch: int | None = None) -> str:
    """``fleetd serve (pid 1234 on host-a, lease epoch 7)`` for ``serve:host-a:1234``; an id that ``holder_id``
    did not make is shown as it is: ``ci-job-4711 (lease epoch 7)``."""
    parsed = parse_holder(holder)
    details = [f"pid {parsed[2]} on {parsed[1]}"] if parsed is not None else []
    if epoch is not None:
        details.append(f"lease epoch {epoch}")
    who = f"fleetd {parsed[0]}" if parsed is not None else holder
    return f"{who} ({', '.join(details)})" if details else who


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
    keep_waiting: Callable[[leases.LeaseInfo], bool] | None = None,
) -> HeldLease:
    """Take the lease, trying again until ``timeout_s`` has passed; raises ``LockBusy`` naming the holder.
    ``keep_waiting`` is told who holds the lease at each try before the deadline and may end the wait at once
    (``False``), as ``apply`` does for a ``serve``."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        epoch = registry.acquire_lease(name, holder, ttl_ms=ttl_ms)
        if epoch is not None:
            return HeldLease(Fence(name, holder, epoch), ttl_ms)
        with registry.engine.connect() as conn:
            other = leases.held_by_other(conn, name, holder, now_ms=registry.clock())
        remaining = deadline - time.monotonic()
        if other is not None and (remaining <= 0 or (keep_waiting is not None and not keep_waiting(other))):
            raise LockBusy(name, other.holder, other.expires_ms - registry.clock(), other.epoch)
        if other is None and remaining <= 0:  # it expired or was released just now: one more try
            epoch = registry.acquire_lease(name, holder, ttl_ms=ttl_ms)
            if epoch is not None:
                return HeldLease(Fence(name, holder, epoch), ttl_ms)
            raise LockBusy(name, None, None)
        time.sleep(min(POLL_S, max(remaining, 0.0)))  # waiting for another process's lease, not for one of ours


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
