"""The HTTP endpoints of ``fleetd serve``: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``.

Standard library only (``ThreadingHTTPServer`` on a thread), localhost by default. Liveness and readiness
are separate on purpose (LocalAI added ``/readyz`` after a healthy heartbeat hid a dead command path): alive
means the process's loop runs; ready means a cycle completed and the registry answered.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text exposition format."""


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


class HttpApi:
    def __init__(self, address: tuple[str, int], endpoints: Endpoints) -> None:
        """Raises ``HttpAddressError`` naming the address (in use, not this machine's, not allowed)."""
        handler = _handler(endpoints)
        try:
            self._server = ThreadingHTTPServer(address, handler)
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise HttpAddressError(
                f"cannot serve HTTP on {where}: {exc.strerror or exc}; pass --http HOST:PORT with a free port, "
                "or --http off"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleetd-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetd"

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
