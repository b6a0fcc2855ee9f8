"""``fleetd agent`` processes for tests: each with its own state dir, a port the OS chose, its own log, and
``--facts``/TLS as asked. ``AgentProcess`` can SIGTERM, SIGKILL, SIGSTOP/SIGCONT and restart its agent on the
same address (the manifest names it), which is how node loss, hangs and rejoin are tested."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fleetd.transport.security import TlsFiles
from tests.agent.support import wait_for

START_TIMEOUT_S = 30.0


@dataclass
class AgentProcess:
    node: str
    state_dir: Path
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    history: list[int] = field(default_factory=list)
    """Pids of every agent process this node ran."""

    @property
    def address_file(self) -> Path:
        return self.state_dir / "agent" / "address"

    def start(self, *, listen: str | None = None) -> AgentProcess:
        """Start the agent (on ``listen``, default the address it had, else a free port) and wait until it
        serves."""
        with contextlib.suppress(FileNotFoundError):
            self.address_file.unlink()
        where = listen or self.address or "127.0.0.1:0"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetd", "agent", "--node", self.node, "--listen", where, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.history.append(self.process.pid)
        process = self.process

        def serving() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"agent {self.node} exited with {process.returncode}:\n{self.log()}")
            return self.address_file.read_text().strip() if self.address_file.exists() else None

        self.address = wait_for(serving, timeout_s=START_TIMEOUT_S, what=f"agent {self.node} to serve")
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the agent alone: its replicas keep running in their own sessions."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process is not None else 0
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def agent_process(
    node: str,
    root: Path,
    *,
    facts: Mapping[str, object] | None = None,
    tls: TlsFiles | None = None,
    bootstrap: bool = False,
    env: Mapping[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    """An agent for ``node`` under ``root/node`` (not started): ``--insecure`` unless ``tls`` is given, or
    ``bootstrap`` (neither: the certificate comes from the controller's CA at registration, with ``--nats``). Agents
    sharing this machine need ``ports`` ranges of their own: a port one agent just chose may not be bound yet
    when another agent's free-port check runs."""
    state = root / node
    state.mkdir(parents=True, exist_ok=True)
    args = ["--state-dir", str(state)]
    if ports is not None:
        args += ["--ports", f"{ports[0]}-{ports[1]}"]
    args += list(extra)
    if facts is not None:
        facts_path = state / "facts.json"
        facts_path.write_text(json.dumps(facts))
        args += ["--facts", str(facts_path)]
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--tls-ca", str(tls.ca)]
    elif not bootstrap:
        args.append("--insecure")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    environment.update(env or {})
    return AgentProcess(node, state, args, environment, root / f"{node}.log")


@contextlib.contextmanager
def running_agents(agents: list[AgentProcess]) -> Iterator[list[AgentProcess]]:
    """Start every agent; at the end stop them (SIGTERM: replicas left running, for the caller to clean)."""
    try:
        for agent in agents:
            agent.start()
        yield agents
    finally:
        for agent in agents:
            agent.stop()
