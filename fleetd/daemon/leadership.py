"""Leadership of ``fleetd serve``: the ``controller`` lease, taken, renewed and given up (DESIGN.md section 3).

Several controllers may run against one registry; only the holder of the lease runs cycles, and it passes its
``Fence`` (lease, holder, epoch) to the executor so that a controller deposed mid-apply cannot write over its
successor's work. A thread renews the lease every TTL/3; when a renewal fails the controller stops leading at
once and goes back to trying to acquire it. A crashed leader's lease simply expires.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from fleetd.executing import Fence

LEASE = "controller"


class LeaseStore(Protocol):
    """The registry's lease calls (``fleetd.registry.facade.Registry`` is one)."""

    def acquire_lease(self, name: str, holder: str, *, ttl_ms: int) -> int | None: ...

    def renew_lease(self, name: str, holder: str, epoch: int, *, ttl_ms: int) -> bool: ...

    def release_lease(self, name: str, holder: str, epoch: int) -> bool: ...


class Leadership:
    """Whether this controller leads, kept true by a renewing thread; ``on_change`` runs after each change."""

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
            with contextlib.suppress(SQLAlchemyError):  # else it expires by itself
                self._store.release_lease(fence.lease, fence.holder, fence.epoch)

    def tick(self) -> None:
        """Renew the lease while leading; otherwise (or when renewal failed) try to take it."""
        fence = self.fence
        if fence is not None and self._call(
            lambda: self._store.renew_lease(LEASE, self._holder, fence.epoch, ttl_ms=self._ttl_ms)
        ):
            return
        if fence is not None:
            self._set(None)
        epoch = self._call(lambda: self._store.acquire_lease(LEASE, self._holder, ttl_ms=self._ttl_ms))
        if epoch:
            self._set(Fence(LEASE, self._holder, int(epoch)))

    def _call(self, call: Callable[[], bool | int | None]) -> bool | int | None:
        try:
            value = call()
        except SQLAlchemyError:
            self.registry_answered = False
            return None
        self.registry_answered = True
        return value

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
