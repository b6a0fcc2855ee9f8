"""The SQLite registry's instance lock and identity: two controllers never both lead on one file (issue 15).

The ``controller`` lease is a row in the registry. On PostgreSQL that row is the truth. On SQLite the registry is
a file that an operator can delete under a running controller: the running one goes on writing into the
deleted file (its open connections keep the inode alive), and a second controller started on the same state dir
creates a fresh file, finds no lease and leads too (split brain). Two things close that:

- **The instance lock**: an exclusive ``flock`` on a file beside the registry (``fleetd.db`` -> ``fleetd.lock``,
  a name that ``rm fleetd.db*`` does not match), taken before the lease and held exactly as long as the lease
  by whoever holds it (a leading ``serve``, or a one-shot command under the lease). The kernel drops it when the
  process dies, so a SIGKILLed leader leaves nothing to break by hand (its lease row still runs out after its
  TTL). The file holds the holder's id (``serve:host:pid``) so that the others can say who holds it.
- **The file's identity**: the registry's (device, inode) is remembered when it is opened; ``lost`` says when the
  file at the path is gone or is another file (and when the lock file we hold was deleted or replaced). The
  controller then stops writing. The engine never creates the file again after opening it (``engine.py``
  opens connections with ``mode=rw``), and refuses to create it while another process holds the lock or while a
  write-ahead log of a deleted database lies beside it (``check_before_create``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from fleetd.registry.leases import describe_holder

LOCK_SUFFIX = ".lock"
HOLDER_BYTES = 256
"""The most of the lock file read for the holder's id."""


class RegistryFileError(Exception):
    """The SQLite registry file cannot be used as it is; the message is one line naming the path and what to do."""


@dataclass(frozen=True, slots=True)
class FileId:
    device: int
    inode: int


def lock_path_of(database: Path) -> Path:
    """``fleetd.db`` -> ``fleetd.lock`` (``fleetd`` -> ``fleetd.lock``, ``x.lock`` -> ``x.lock.lock``)."""
    candidate = database.with_suffix(LOCK_SUFFIX) if database.suffix else database
    if candidate == database:
        candidate = database.with_name(database.name + LOCK_SUFFIX)
    return candidate


def file_id(path: Path) -> FileId | None:
    """The (device, inode) of the file at ``path``, or ``None`` when there is none."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return FileId(found.st_dev, found.st_ino)


def held_by_another(lock_path: Path) -> str | None:
    """The id written in ``lock_path`` when another open file holds its lock (``"another process"`` when it
    names nobody), else ``None``. Takes the lock for a moment when nobody holds it."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, HOLDER_BYTES).decode("utf-8", "replace").strip()
            return text.splitlines()[0] if text else "another process"
        return None
    finally:
        os.close(fd)  # drops our shared lock, if we took it


def check_before_create(database: Path) -> None:
    """Raise ``RegistryFileError`` when ``database`` (missing) must not be created now: another process holds
    its instance lock (the file was deleted under a running controller), or a write-ahead log of a deleted
    database lies beside it (SQLite would answer "disk I/O error")."""
    holder = held_by_another(lock_path_of(database))
    if holder is not None and not database.exists():  # a holder that just created it made it first
        raise RegistryFileError(
            f"the registry {database} is missing while {describe_holder(holder)} holds its instance lock "
            f"{lock_path_of(database)}: it was deleted under a running controller; stop that process (see its "
            "log), then start again"
        )
    wal = database.with_name(database.name + "-wal")
    with contextlib.suppress(FileNotFoundError):
        if wal.stat().st_size > 0 and not database.exists():
            raise RegistryFileError(
                f"the registry {database} is missing but its write-ahead log {wal} is there: the database was "
                f"deleted while a fleetd had it open; restore {database}, or move {wal} and "
                f"{database.name}-shm away to start on an empty registry"
            )


class InstanceLock:
    """The instance lock of one SQLite registry file, and that file's identity since it was opened.

    One per ``Registry``; thread-safe. ``take`` and ``release`` go with the controller lease (see
    ``fleetd.controlling.leadership``); ``lost`` is checked before each lease call and each cycle.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = lock_path_of(database)
        self._opened = file_id(database)
        self._fd: int | None = None
        self._held: FileId | None = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        with self._mutex:
            return self._fd is not None

    def take(self, holder: str) -> bool:
        """Take the lock without waiting and write ``holder`` into it; ``True`` when this process holds it (now
        or already), ``False`` while another open file holds it. Raises ``OSError`` when the file cannot be
        made (the caller treats it as a registry that did not answer)."""
        with self._mutex:
            if self._fd is not None:
                return True
            fd, writable = _open_lock_file(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            found = os.fstat(fd)
            if writable:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{holder}\n".encode(), 0)
            self._fd, self._held = fd, FileId(found.st_dev, found.st_ino)
            return True

    def release(self) -> None:
        """Give the lock up (closing the file drops it); nothing when not held."""
        with self._mutex:
            fd, self._fd, self._held = self._fd, None, None
        if fd is not None:
            os.close(fd)

    def holder(self) -> str | None:
        """Who else holds the lock, as its file says; ``None`` when this process holds it or nobody does."""
        if self.held:
            return None
        return held_by_another(self.path)

    def lost(self) -> str | None:
        """Why this process may no longer write the registry, or ``None``: the registry file (or the lock file
        it holds) was deleted or replaced since it was opened."""
        if self._opened is not None:
            now = file_id(self.database)
            if now is None:
                return f"the registry {self.database} was deleted"
            if now != self._opened:
                return f"the registry {self.database} was replaced by another file"
        with self._mutex:
            held = self._held
        if held is not None and file_id(self.path) != held:
            return f"the registry's instance lock {self.path} was deleted or replaced"
        return None


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """The lock file, made when missing: (descriptor, writable). A user who may not write it (another user's
    controller made it) still locks it read-only (``flock`` needs no write access); only the holder's id is
    then not written."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
