"""The HTTP endpoints of ``fleetd serve``: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``.

Standard library only (``ThreadingHTTPServer`` on a thread), localhost by default. Liveness and readiness
are separate on purpose (LocalAI added ``/readyz`` after a healthy heartbeat hid a dead command path): alive
means the process's loop runs; ready means a cycle completed and the registry answered.

Bounded: each connection has a socket timeout (an idle or slow client cannot hold its thread), at most
``max_connections`` are served at once (one more is answered ``503`` and closed at once, without a thread),
and a client that goes away mid-response costs one debug line, never a traceback on stderr.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("fleetd.http")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format."""

CONNECTION_TIMEOUT_S = 10.0
"""A connection that sends or reads nothing for this long is closed."""

MAX_CONNECTIONS = 32
"""Connections served at once; one more is answered 503 and closed."""

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Connection: close\r\n\r\nbusy\n"
)
_GONE = (ConnectionError, TimeoutError)
"""What a client that disconnects or stalls raises in the handler: not the server's fault."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the server asks of the daemon; each is called on a request thread."""

    alive: Callable[[], bool]
    ready: Callable[[], bool]
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) -> (host, port); raises ``ValueError`` naming the value."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not host or not port.isdigit() or (":" in host and not bracketed) or "[" in host.strip("[]"):
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464, or [::1]:9464 for IPv6)")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be within 0-65535")
    return (host[1:-1] if bracketed else host), int(port)


class HttpAddressError(OSError):
    """The ``--http`` address cannot be served; the message names it and what to do."""


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once; client disconnects logged at debug."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int
    ) -> None:
        self.max_connections = max_connections
        self.connections = 0
        self._count_lock = threading.Lock()
        super().__init__(address, handler)

    def _take(self, delta: int) -> bool:
        with self._count_lock:
            if delta > 0 and self.connections >= self.max_connections:
                return False
            self.connections += delta
            return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._take(1):
            _refuse(request, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._take(-1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._take(-1)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _GONE):
            log.debug("HTTP client %s went away: %s", client_address, error)
        else:
            log.error("HTTP request from %s failed", client_address, exc_info=True)


def _refuse(request: socket.socket, client_address: Any) -> None:
    """Answer 503 without a thread; the send buffer of a fresh connection takes it without blocking."""
    log.debug("HTTP connection from %s refused: too many connections", client_address)
    try:
        request.setblocking(False)
        request.send(_BUSY)
    except OSError:
        pass


class HttpApi:
    def __init__(
        self,
        address: tuple[str, int],
        endpoints: Endpoints,
        *,
        timeout: float = CONNECTION_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Raises ``HttpAddressError`` naming the address (in use, not this machine's, not allowed).
        ``timeout``: seconds a connection may stay silent; ``max_connections``: connections served at once."""
        handler = _handler(endpoints, timeout)
        try:
            self._server = _BoundedServer(address, handler, max_connections)
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise HttpAddressError(
                f"cannot serve HTTP on {where}: {exc.strerror or exc}; pass --http HOST:PORT with a free port, "
                "or --http off"
            ) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleetd-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return self._server.connections

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(endpoints: Endpoints, seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetd"
        # A socket timeout on every read and write (StreamRequestHandler.setup): a silent client is dropped.
        timeout = seconds

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._probe(endpoints.alive())
            elif path == "/readyz":
                self._probe(endpoints.ready())
            elif path == "/metrics":
                self._send(200, endpoints.metrics(), METRICS_CONTENT_TYPE)
            elif path == "/status":
                body = json.dumps(endpoints.status(), indent=2, sort_keys=True).encode() + b"\n"
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _probe(self, ok: bool) -> None:
            self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would flood stderr

    return Handler
