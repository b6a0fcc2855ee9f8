"""What makes ``fleetd serve`` run a cycle, and the one worker that runs them (architecture.md §1).

Every trigger (the APScheduler interval tick, a watchfiles change of the manifest, SIGHUP, a change of
leadership) only sets one ``Event``; a single worker thread waits on it, clears it and runs a cycle. So cycles
never overlap, a burst of triggers becomes one cycle, and a trigger that arrives during a cycle causes exactly
one more cycle after it (the level-triggered reconcile needs no more: it reads everything afresh). The worker
also says whether its cycle makes progress (``CycleWorker.stuck``): that, not the thread being there, is what
the daemon's liveness reports.

The manifest watcher watches both the paths as given and their resolved targets (and their parent
directories), and restarts its watch when a symlink now points elsewhere: Kubernetes ConfigMaps and many
deploy tools swap symlinks (llama-swap #671). It fires only when the manifest's bytes changed, so the
registry's own SQLite file beside the manifest does not start a loop of cycles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import watchfiles
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]

from fleetd.manifest.reading import files_fingerprint, read_manifest_files

WATCH_DEBOUNCE_MS = 100
WATCH_TIMEOUT_MS = 200
"""How long a quiet watch waits before it wakes (to learn that it is in place, and to see a directory swap)."""


class CycleWorker:
    """Runs ``cycle()`` on its own thread, once per burst of ``trigger()`` calls, one at a time.

    It is alive while its cycles make progress, not merely while its thread exists: a cycle that has gone
    ``stuck_after_s`` without ``progress()`` (or longer than the allowance the last ``progress`` gave it) is
    ``stuck``, so ``/healthz``, ``/readyz`` and the systemd watchdog stop saying it is healthy. The thread is a
    daemon thread and ``stop`` waits for it at most a given time: a cycle that never returns does not keep the
    process from ending.
    """

    def __init__(
        self, cycle: Callable[[], None], *, on_error: Callable[[BaseException], None], stuck_after_s: float = 300.0
    ) -> None:
        self._cycle = cycle
        self._on_error = on_error
        self.stuck_after_s = stuck_after_s
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetd-worker", daemon=True)
        self._lock = threading.Lock()
        self._busy_since: float | None = None
        self._last_progress = 0.0
        self._allowance_s = stuck_after_s

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        self._wanted.set()

    def progress(self, allowance_s: float | None = None) -> None:
        """The running cycle moved on (an action ended, an install printed a line); ``allowance_s``: it may now
        go this long without progress (at least ``stuck_after_s``), e.g. the deadline of the loads it starts."""
        with self._lock:
            self._last_progress = time.monotonic()
            if allowance_s is not None:
                self._allowance_s = max(self.stuck_after_s, allowance_s)

    def stuck(self) -> tuple[float, float] | None:
        """(seconds since the running cycle's last progress, the allowance it passed), or ``None`` while the
        worker is idle or its cycle still within its allowance."""
        with self._lock:
            if self._busy_since is None:
                return None
            quiet_s = time.monotonic() - self._last_progress
            return (quiet_s, self._allowance_s) if quiet_s > self._allowance_s else None

    def busy_for(self) -> float | None:
        """Seconds the running cycle has run, or ``None`` while idle."""
        with self._lock:
            return None if self._busy_since is None else time.monotonic() - self._busy_since

    def alive(self) -> bool:
        """The thread runs and its cycle, if any, is not stuck."""
        return self._thread.is_alive() and self.stuck() is None

    def stop(self, timeout_s: float | None = None) -> bool:
        """Let the current cycle finish, run no more, and wait for the thread (at most ``timeout_s``); whether
        it ended."""
        self._stopping.set()
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            with self._lock:
                self._busy_since = self._last_progress = time.monotonic()
                self._allowance_s = self.stuck_after_s
            try:
                self._cycle()
            except Exception as exc:  # a failed cycle is reported; the next trigger tries again
                self._on_error(exc)
            finally:
                with self._lock:
                    self._busy_since = None


class SpacedTrigger:
    """Passes calls on to ``trigger`` at most once per ``min_gap_s``: a call inside the gap is passed on once
    when the gap ends, however many came. Replica events go through it, so that many replicas in a crash loop
    cannot keep the worker cycling back to back while a single event still starts a cycle at once."""

    def __init__(self, trigger: Callable[[], None], *, min_gap_s: float) -> None:
        self._trigger = trigger
        self._gap_s = min_gap_s
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None

    @property
    def pending(self) -> bool:
        """Whether a call waits for the gap to end."""
        with self._lock:
            return self._timer is not None

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self._gap_s - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._deferred)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self._trigger()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _deferred(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._trigger()


def interval_scheduler(trigger: Callable[[], None], *, interval_s: float) -> BackgroundScheduler:
    """An APScheduler interval job that triggers a cycle (with jitter, never piling up missed runs)."""
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        trigger,
        "interval",
        seconds=interval_s,
        jitter=max(0.0, interval_s / 10),
        max_instances=1,
        coalesce=True,
        id="reconcile",
        misfire_grace_time=None,
    )
    return scheduler


def manifest_fingerprint(paths: Sequence[Path]) -> str:
    """A digest of the manifest's files as they would be read now (names, bytes, read errors)."""
    return files_fingerprint(*read_manifest_files(paths))


def watch_directories(paths: Sequence[Path]) -> frozenset[Path]:
    """The directories whose changes can change the manifest: each path's own directory (or itself when it is
    a directory), both as given and resolved through symlinks; missing ones are skipped."""
    found: set[Path] = set()
    for path in paths:
        absolute = path.absolute()
        for candidate in (absolute, absolute.resolve()):
            directory = candidate if candidate.is_dir() else candidate.parent
            if directory.is_dir():
                found.add(directory)
    return frozenset(found)


class ManifestWatcher:
    """A thread that calls ``on_change`` when the manifest's content changes (debounced)."""

    def __init__(self, paths: Sequence[Path], on_change: Callable[[], None]) -> None:
        self._paths = tuple(paths)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetd-watch", daemon=True)
        self._fingerprint = manifest_fingerprint(self._paths)
        self._watching = threading.Event()
        self.last_change_at: float | None = None
        """``time.monotonic()`` when the last change was noticed (bench/converge.py)."""

    def start(self) -> None:
        self._thread.start()

    def wait_until_watching(self, timeout_s: float) -> bool:
        """Whether the watch is in place (within ``timeout_s``): from then on every change is noticed."""
        return self._watching.wait(timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop watching; waits for the thread at most ``timeout_s`` (a manifest read has its own deadline)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            directories = watch_directories(self._paths)
            if not directories:
                self._stop.wait(1.0)  # nothing to watch yet; the interval tick still reconciles
                continue
            self._watch(directories)

    def _watch(self, directories: frozenset[Path]) -> None:
        """Watch until stopped or until the set of directories to watch changes (a symlink was swapped).

        The watch is set up on the generator's first step, and a change made meanwhile would go unseen, so the
        generator also yields (empty) every ``WATCH_TIMEOUT_MS`` without changes: the first such yield comes
        once the watch is in place, and the manifest is compared then.
        """
        settled = False
        for changes in watchfiles.watch(
            *sorted(directories),
            debounce=WATCH_DEBOUNCE_MS,
            step=20,
            stop_event=self._stop,
            rust_timeout=WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            recursive=False,
            watch_filter=None,
            raise_interrupt=False,
        ):
            if changes or not settled:
                self._check()
                settled = True
                self._watching.set()
            if watch_directories(self._paths) != directories:
                return

    def _check(self) -> None:
        fingerprint = manifest_fingerprint(self._paths)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.last_change_at = time.monotonic()
            self._on_change()
