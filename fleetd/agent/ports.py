"""Ports for replica processes: taken from a configurable range, checked free, and reserved machine-wide.

A port is free when nothing on this host listens on it (a bind test), no replica of this agent holds it, and no
other fleetd agent on this machine has reserved it. The reservation is an advisory lock (``flock``) on one file
per port in a directory shared by every agent of this user (``<tmp>/fleetd-ports-<uid>``): a port another agent
just chose is not bound yet while its replica starts, and a bind test alone would hand it out twice (two agents'
default ranges both start at 18000). The kernel drops a dead agent's locks; its replicas keep their ports bound,
and the bind test covers those.

A restart whose port has been taken meanwhile moves the replica to another port (``Supervisor``): the address
the agent reports changes, and the registry, status and routing follow it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
from pathlib import Path

DEFAULT_RANGE = (18000, 18999)
"""Below the ephemeral ports (Linux: 32768-60999): a replica port inside that range can be taken at any
moment as the source port of some outgoing connection, and the replica then cannot bind it."""


class PortsExhausted(Exception):
    """No free port is left in the range."""


def default_lock_dir() -> Path:
    """Where the agents of this user on this machine reserve ports."""
    return Path(tempfile.gettempdir()) / f"fleetd-ports-{os.getuid()}"


class PortLocks:
    """Machine-wide port reservations: an exclusive ``flock`` per port, held until released or the process dies."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = directory or default_lock_dir()
        self._held: dict[int, int] = {}
        """Port -> the open descriptor that holds its lock."""

    def take(self, port: int) -> bool:
        """Reserve ``port``; ``False`` when another agent holds it (or the directory is unusable: then the bind
        test alone decides, as before reservations existed)."""
        if port in self._held:
            return True
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._dir / str(port), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[port] = fd
        return True

    def give_back(self, port: int) -> None:
        fd = self._held.pop(port, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops its lock


class PortAllocator:
    """Hands out ports in ``[first, last]``; thread-safe."""

    def __init__(
        self,
        first: int = DEFAULT_RANGE[0],
        last: int = DEFAULT_RANGE[1],
        host: str = "127.0.0.1",
        *,
        locks: PortLocks | None = None,
    ) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {first}-{last}")
        self._first, self._last, self._host = first, last, host
        self._locks = locks or PortLocks()
        self._held: set[int] = set()
        self._next = first
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self._host

    def allocate(self) -> int:
        """The next free port of the range, round robin (a port just released is not reused at once)."""
        with self._lock:
            size = self._last - self._first + 1
            for i in range(size):
                port = self._first + (self._next - self._first + i) % size
                if port in self._held or not is_free(self._host, port):
                    continue
                if not self._locks.take(port):
                    continue
                self._held.add(port)
                self._next = port + 1 if port < self._last else self._first
                return port
        raise PortsExhausted(
            f"no free port in {self._first}-{self._last} on {self._host}; widen the agent's port range (--ports)"
        )

    def claim(self, port: int) -> None:
        """Mark a port as held (an adopted replica's)."""
        with self._lock:
            self._held.add(port)
            self._locks.take(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._held.discard(port)
            self._locks.give_back(port)


def is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now. With ``SO_REUSEADDR``, as servers bind (llama-server,
    Python's HTTP servers): the connections a killed replica leaves in TIME_WAIT do not make its port "taken"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
