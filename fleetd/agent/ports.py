"""Ports for replica processes: taken from a configurable range, checked free before use.

A port is free when nothing on this host listens on it (a bind test) and no replica of this agent holds it,
so a replica restarted while its old process still holds the port does not collide with it.
"""

from __future__ import annotations

import socket
import threading

DEFAULT_RANGE = (18000, 18999)
"""Below the ephemeral ports (Linux: 32768-60999): a replica port inside that range can be taken at any
moment as the source port of some outgoing connection, and the replica then cannot bind it."""


class PortsExhausted(Exception):
    """No free port is left in the range."""


class PortAllocator:
    """Hands out ports in ``[first, last]``; thread-safe."""

    def __init__(
        self, first: int = DEFAULT_RANGE[0], last: int = DEFAULT_RANGE[1], host: str = "127.0.0.1"
    ) -> None:
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {first}-{last}")
        self._first, self._last, self._host = first, last, host
        self._held: set[int] = set()
        self._next = first
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """The next free port of the range, round robin (a port just released is not reused at once)."""
        with self._lock:
            size = self._last - self._first + 1
            for i in range(size):
                port = self._first + (self._next - self._first + i) % size
                if port not in self._held and is_free(self._host, port):
                    self._held.add(port)
                    self._next = port + 1 if port < self._last else self._first
                    return port
        raise PortsExhausted(f"no free port in {self._first}-{self._last}; widen the agent's port range")

    def claim(self, port: int) -> None:
        """Mark a port as held (an adopted replica's)."""
        with self._lock:
            self._held.add(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._held.discard(port)


def is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
