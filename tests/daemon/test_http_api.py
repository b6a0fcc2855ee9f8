"""The daemon's HTTP server is bounded: silent connections time out, at most N are served at once (one more
gets 503 at once), and a client that disconnects mid-response leaves no traceback on stderr."""

from __future__ import annotations

import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from fleetd.daemon.http_api import Endpoints, HttpApi

BIG = b"# a large exposition\n" + b"fleetd_filler 1\n" * 1_000_000  # ~16 MB: more than the socket buffers
BIG_STATUS = {"filler": ["x" * 64] * 200_000}  # ~15 MB of JSON


def _until(condition: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds}s: {condition}")


@contextmanager
def _served(**options: Any) -> Iterator[HttpApi]:
    endpoints = Endpoints(alive=lambda: True, ready=lambda: True, metrics=lambda: BIG, status=lambda: BIG_STATUS)
    api = HttpApi(("127.0.0.1", 0), endpoints, **options)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def _port(api: HttpApi) -> int:
    return int(api.address.rsplit(":", 1)[1])


def _get(api: HttpApi, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{_port(api)}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)
    except OSError:
        return None


def _idle(api: HttpApi) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(api)), timeout=10)


def test_a_silent_connection_is_closed_within_the_timeout() -> None:
    with _served(timeout=0.5) as api, _idle(api) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed it; the socket's own timeout (10 s) did not fire
        assert time.monotonic() - started < 5


def test_one_connection_over_the_bound_gets_503_and_the_server_recovers() -> None:
    with _served(timeout=0.5, max_connections=2) as api, ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(_idle(api))
        _until(lambda: api.connections == 2)
        assert _get(api, "/healthz") == 503  # answered at once, not queued behind the idle ones
        _until(lambda: api.connections == 0)  # the idle ones timed out
        assert _get(api, "/healthz") == 200


@pytest.mark.parametrize("path", ["/metrics", "/status"])
def test_a_client_that_aborts_mid_response_leaves_no_traceback(
    path: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with _served(timeout=5) as api:
        for _ in range(3):
            with _idle(api) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sock.recv(1024)
                # close with a reset, not a FIN: the server's next write fails at once
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _until(lambda: api.connections == 0)
        assert _get(api, "/healthz") == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
