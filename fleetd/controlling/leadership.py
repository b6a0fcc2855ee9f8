"""The ``controller`` lease: one controller changes the fleet at a time (architecture.md §3).

Why a lease and not a lock file: the registry may be PostgreSQL shared by several machines, a killed controller
must not leave a lock that someone has to break by hand (LESSONS.md: Terraform's stale locks), and the lease's
fencing epoch goes to the executor, whose writes stop the moment another controller takes over.

Two holders, one renewal: ``Leadership`` is ``fleetd serve``'s (it renews while leading and tries to take the
lease while not, and says when that changes); ``held`` is a one-shot command's (``apply``, ``status``): it
waits for the lease up to a timeout, renews it while the command runs, and releases it. Both renew every third
of the TTL through ``_renew``, where a registry error is a missed renewal, not a crash.

On a SQLite registry the lease goes with the file's instance lock (``fleetd.registry.instance_lock``): it is
taken before the lease and given back with it, so two controllers can never both lead on one state dir, even
when the registry file is deleted under the leader (the lease row then goes with the file). Before each lease
call and each cycle the file is checked to be the one opened; when it was deleted or replaced the controller
stops leading for good (``Leadership.registry_lost``) and writes nothing more.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from fleetd.executing.fencing import Fence
from fleetd.registry import leases
from fleetd.registry.facade import Registry
from fleetd.registry.instance_lock import InstanceLock, RegistryFileError

CONTROLLER_LEASE = "controller"
parse_holder = leases.parse_holder
describe_holder = leases.describe_holder
DEFAULT_TTL_MS = 30_000
POLL_S = 0.25
"""How often a waiting one-shot command tries the lease again."""


class LeaseStore(Protocol):
    """The registry's lease calls (``fleetd.registry.facade.Registry`` is one)."""

    def acquire_lease(self, name: str, holder: str, *, ttl_ms: int) -> int | None: ...

    def renew_lease(self, name: str, holder: str, epoch: int, *, ttl_ms: int) -> bool: ...

    def release_lease(self, name: str, holder: str, epoch: int) -> bool: ...

    def other_lease(self, name: str, holder: str) -> leases.LeaseInfo | None: ...


class RegistryLost(RegistryFileError):
    """The SQLite registry file this process opened was deleted or replaced (or the instance lock file it
    holds): it must write no more. The message says which file."""


_DOING = {
    "apply": "is applying",
    "status": "is reading the fleet's status",
    "replica-restart": "is restarting replicas",
}
"""What a one-shot command holding the lease is doing, by the role in its holder id."""


class LockBusy(Exception):
    """Another holder kept the lease for the whole wait, or is a ``serve``, which keeps it while it runs. The
    message names the holder as its id records it (role, host, pid) and the lease's epoch, and says what the
    holder does: only an ``apply`` "is applying"; a ``serve`` leads and applies its own manifest. With
    ``lock_path``, the holder was found in a SQLite registry's instance lock, not in its lease row."""

    def __init__(
        self,
        name: str,
        holder: str | None,
        expires_in_ms: int | None,
        epoch: int | None = None,
        *,
        lock_path: Path | None = None,
    ) -> None:
        self.name = name
        self.holder = holder
        self.expires_in_ms = expires_in_ms
        self.epoch = epoch
        text = _busy_text(name, holder, expires_in_ms, epoch, lock_path)
        super().__init__(text)

    @property
    def serve_leads(self) -> bool:
        """The holder is a ``fleetd serve``: it keeps the lease as long as it runs, so waiting is pointless."""
        return self.holder is not None and holder_role(self.holder) == "serve"


def _busy_text(
    name: str, holder: str | None, expires_in_ms: int | None, epoch: int | None, lock_path: Path | None
) -> str:
    if holder is None or (expires_in_ms is None and lock_path is None):
        return f"the {name!r} lease stayed taken"
    if lock_path is not None:
        return (
            f"{describe_holder(holder)} holds the instance lock {lock_path} of this SQLite registry, without "
            "its lease here (was the registry file deleted or replaced under it? see its log): stop it, "
            "then try again"
        )
    if holder_role(holder) == "serve":
        return (
            f"{describe_holder(holder, epoch)} leads this fleet and applies the manifest itself: commit or "
            "edit the manifest it watches, or stop it to apply by hand"
        )
    role = parse_holder(holder)
    doing = _DOING.get(role[0], "") if role is not None else ""
    return (
        f"{describe_holder(holder, epoch)} holds the {name} lease{' and ' + doing if doing else ''}; "
        f"the lease runs out in {_seconds(expires_in_ms or 0)} s unless it is renewed"
    )


@dataclass(frozen=True)
class HeldLease:
    """A lease this process holds; ``lost`` is set when a renewal found it taken over or expired."""

    fence: Fence
    ttl_ms: int
    lost: threading.Event = field(default_factory=threading.Event, compare=False)


def holder_id(role: str) -> str:
    """``apply:<hostname>:<pid>``: who holds a lease (``describe_holder`` says it in words)."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def holder_role(holder: str) -> str | None:
    parsed = parse_holder(holder)
    return parsed[0] if parsed is not None else None


def _check(lock: InstanceLock | None) -> None:
    """Raise ``RegistryLost`` when the SQLite registry (or the lock file held) is not the file opened."""
    lost = lock.lost() if lock is not None else None
    if lost is not None:
        raise RegistryLost(lost)


def _take(store: LeaseStore, lock: InstanceLock | None, name: str, holder: str, ttl_ms: int) -> int | None:
    """The instance lock (SQLite), then the lease: its epoch, or ``None`` while someone else holds either (the
    lock is given back when the lease was not had). Raises ``RegistryLost``, and the registry's errors
    (``SQLAlchemyError``; ``OSError`` when the lock file cannot be made)."""
    _check(lock)
    if lock is not None and not lock.take(holder):
        return None
    try:
        epoch = store.acquire_lease(name, holder, ttl_ms=ttl_ms)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if epoch is None and lock is not None:
        lock.release()
    return epoch


def _renew(store: LeaseStore, fence: Fence, ttl_ms: int, lock: InstanceLock | None = None) -> bool | None:
    """Renew the lease: ``True`` renewed, ``False`` taken over or expired, ``None`` the registry did not answer
    (try again; the fence stops our writes if the lease runs out meanwhile). Raises ``RegistryLost``."""
    _check(lock)
    try:
        return store.renew_lease(fence.lease, fence.holder, fence.epoch, ttl_ms=ttl_ms)
    except SQLAlchemyError:
        return None


def _release(store: LeaseStore, fence: Fence | None, lock: InstanceLock | None = None) -> None:
    """Give the lease up (not in a registry file that is not ours any more), then the instance lock."""
    try:
        if fence is not None and (lock is None or lock.lost() is None):
            with contextlib.suppress(SQLAlchemyError):  # an unreleased lease simply expires after its TTL
                store.release_lease(fence.lease, fence.holder, fence.epoch)
    finally:
        if lock is not None:
            lock.release()


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
    (``False``), as ``apply`` does for a ``serve``. Raises ``RegistryLost`` when the SQLite file vanished."""
    deadline = time.monotonic() + max(0.0, timeout_s)
    lock = registry.instance_lock
    while True:
        epoch = _take(registry, lock, name, holder, ttl_ms)
        if epoch is not None:
            return HeldLease(Fence(name, holder, epoch), ttl_ms)
        remaining = deadline - time.monotonic()
        _end_wait(registry, name, holder, remaining, keep_waiting)
        if remaining <= 0:  # it expired or was released just now: one more try
            epoch = _take(registry, lock, name, holder, ttl_ms)
            if epoch is not None:
                return HeldLease(Fence(name, holder, epoch), ttl_ms)
            raise LockBusy(name, None, None)
        time.sleep(min(POLL_S, remaining))  # waiting for another process's lease, not for one of ours


def _end_wait(
    registry: Registry,
    name: str,
    holder: str,
    remaining: float,
    keep_waiting: Callable[[leases.LeaseInfo], bool] | None,
) -> None:
    """Raise ``LockBusy`` when the wait for someone else's lease ends: the deadline passed, ``keep_waiting``
    said no, or a ``serve`` holds the SQLite registry's instance lock (it keeps it while it runs)."""
    other = registry.other_lease(name, holder)
    if other is not None:
        if remaining <= 0 or (keep_waiting is not None and not keep_waiting(other)):
            raise LockBusy(name, other.holder, other.expires_ms - registry.clock(), other.epoch)
        return
    lock = registry.instance_lock
    locker = lock.holder() if lock is not None else None
    if lock is not None and locker is not None and (remaining <= 0 or holder_role(locker) == "serve"):
        raise LockBusy(name, locker, None, lock_path=lock.path)


@contextlib.contextmanager
def renewed(registry: Registry, held: HeldLease) -> Iterator[HeldLease]:
    """Renew ``held`` every ttl/3 on a daemon thread while the block runs, then release it (even on error).
    ``held.lost`` is set when the lease was taken over, or the SQLite registry file vanished."""
    stop = threading.Event()
    lock = registry.instance_lock

    def renew_loop() -> None:
        while not stop.wait(held.ttl_ms / 3000):
            try:
                renewed_now = _renew(registry, held.fence, held.ttl_ms, lock)
            except RegistryLost:
                renewed_now = False
            if renewed_now is False:
                held.lost.set()
                return

    thread = threading.Thread(target=renew_loop, name=f"fleetd-lease-{held.fence.lease}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        _release(registry, held.fence, lock)


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
    With a SQLite registry's ``lock``, it leads only while it holds the instance lock too, and once the file
    vanished (``registry_lost``) it stops leading for good: ``on_change(None)`` runs with it already set.
    """

    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        *,
        ttl_ms: int,
        on_change: Callable[[Fence | None], None],
        lock: InstanceLock | None = None,
    ) -> None:
        self._store = store
        self._holder = holder
        self._ttl_ms = ttl_ms
        self._on_change = on_change
        self._instance_lock = lock
        self._fence: Fence | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetd-lease", daemon=True)
        self.registry_answered = False
        """Whether the last lease call reached the registry (for ``/readyz``)."""
        self.registry_lost: str | None = None
        """Why this controller writes no more: its SQLite registry file was deleted or replaced."""

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
        _release(self._store, self._set(None), self._instance_lock)

    def verify(self) -> bool:
        """Whether the registry is still the file this process opened (always, on PostgreSQL); when it is not,
        stop leading for good."""
        if self.registry_lost is None:
            try:
                _check(self._instance_lock)
            except RegistryLost as lost:
                self._lose(str(lost))
        return self.registry_lost is None

    def leader(self) -> str | None:
        """Who leads instead of this controller, in words, when the registry or the instance lock says."""
        try:
            other = self._store.other_lease(CONTROLLER_LEASE, self._holder)
        except SQLAlchemyError:
            other = None
        if other is not None:
            return describe_holder(other.holder, other.epoch)
        lock = self._instance_lock
        locker = lock.holder() if lock is not None else None
        return f"{describe_holder(locker)}, which holds {lock.path}," if lock is not None and locker else None

    def tick(self) -> None:
        """Renew the lease while leading; otherwise (or when renewal failed) try to take it."""
        if not self.verify():
            return
        fence = self.fence
        if fence is not None:
            renewed_now = _renew(self._store, fence, self._ttl_ms)
            self.registry_answered = renewed_now is not None
            if renewed_now:
                return
            self._set(None)
            if self._instance_lock is not None:
                self._instance_lock.release()  # taken again with the lease, below
        try:
            epoch = _take(self._store, self._instance_lock, CONTROLLER_LEASE, self._holder, self._ttl_ms)
        except RegistryLost as lost:
            self._lose(str(lost))
            return
        except (SQLAlchemyError, OSError):
            self.registry_answered = False
            return
        self.registry_answered = True
        if epoch:
            self._set(Fence(CONTROLLER_LEASE, self._holder, int(epoch)))

    def _lose(self, why: str) -> None:
        with self._lock:
            if self.registry_lost is not None:
                return
            self.registry_lost = why
        self.registry_answered = False
        if self._set(None) is None:
            self._on_change(None)  # a follower hears it too

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
