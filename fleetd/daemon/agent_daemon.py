"""``fleetd agent``: the process on every GPU node that the controller commands over gRPC (architecture.md §3).

The wiring only: the same ``LocalAgent`` as the embedded mode (supervisor, probes, installer, adoption, VRAM
estimates), the ``EpochGuard`` that fences deposed controllers, and the gRPC server. On start it adopts the
replicas an earlier agent left running; SIGTERM/SIGINT stop the server and the supervisor and leave the
replicas running for the next agent. The address actually bound is written to ``<state-dir>/agent/address``
(``--listen HOST:0`` takes a free port), and systemd hears READY once the server answers.

TLS bootstrap (``security`` is ``None``: ``--nats`` without ``--tls-*`` files or ``--insecure``): the agent
serves with the certificate stored in its state dir (``agent.bootstrap``). When it has none that can serve (the
first join, a lost file, an expired certificate), it registers BEFORE it starts its gRPC server, with a signing
request, and serves once the certificate has come: a server without a certificate cannot take the
controller's calls anyway, and starting it once keeps the listening socket simple. A usable certificate that
expires within 30 days is renewed at registration and serves from the agent's next start.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from fleetd.agent import bootstrap
from fleetd.agent.fencing import EpochGuard
from fleetd.agent.local import LocalAgent
from fleetd.agent.node_facts import DeclaredFacts
from fleetd.agent.ports import DEFAULT_RANGE, PortAllocator
from fleetd.agent.probing import warm_up
from fleetd.agent.server import RunningServer, start_server
from fleetd.daemon.agent_bus import AgentBus, BusSettings
from fleetd.daemon.sd_notify import notify, watch_until
from fleetd.transport.security import Security

log = logging.getLogger("fleetd.agent")
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class AgentConfigError(ValueError):
    """The agent's options do not work together; the message names the option."""


@dataclass(frozen=True)
class AgentConfig:
    node: str
    listen: str
    state_dir: Path
    security: Security | None
    """Mutual TLS with given files, or ``--insecure``; ``None``: the certificate of the TLS bootstrap."""
    advertise: str | None = None
    facts: DeclaredFacts | None = None
    ports: tuple[int, int] = DEFAULT_RANGE
    """The replicas' port range (open it in the node's firewall to the gateway)."""
    bus: BusSettings | None = None
    """``--nats``: join the fleet and heartbeat over the bus."""

    @property
    def replica_host(self) -> str:
        """Where replicas listen: the host others reach this node at (``--advertise``, else ``--listen``)."""
        host = split_address(self.advertise or self.listen)[0]
        if host in WILDCARD_HOSTS:
            raise AgentConfigError(
                f"--listen {self.listen} binds every interface: give --advertise HOST:PORT, the address the "
                "controller and the gateway reach this node at (replicas listen on that host)"
            )
        return host.strip("[]")


def parse_ports(text: str) -> tuple[int, int]:
    """``FIRST-LAST``, both within 1..65535 and in order."""
    first, sep, last = text.partition("-")
    if not sep or not first.isdigit() or not last.isdigit() or not 1 <= int(first) <= int(last) <= 65535:
        raise AgentConfigError(f"--ports {text!r}: expected FIRST-LAST within 1-65535 (e.g. 18000-18999)")
    return int(first), int(last)


def split_address(address: str, flag: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ``AgentConfigError`` naming ``flag`` and the value."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AgentConfigError(f"{flag} {address!r}: expected HOST:PORT (e.g. 10.0.0.5:7443 or 127.0.0.1:0)")
    return host, int(port)


def resolve_port(listen: str) -> str:
    """``listen`` with port 0 replaced by a port free now (to register the address before serving on it)."""
    host, port = split_address(listen)
    if port != 0:
        return listen
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]"), 0))
        return f"{host}:{probe.getsockname()[1]}"


class AgentDaemon:
    def __init__(self, config: AgentConfig) -> None:
        split_address(config.listen, "--listen")
        if config.advertise is not None:
            split_address(config.advertise, "--advertise")
        if config.security is None and config.bus is None:
            raise AgentConfigError("the TLS bootstrap needs --nats: the certificate comes from the controller")
        self._config = config
        self._stopping = threading.Event()
        host = config.replica_host
        allocator = PortAllocator(*config.ports, host=host)
        self.agent = LocalAgent(
            config.node,
            config.state_dir,
            host=host,
            ports=allocator,
            facts=config.facts,
            on_replica_change=self._nudge,
        )
        self.bus: AgentBus | None = None
        self.exit_code = 0
        self.guard = EpochGuard(config.node, config.state_dir / "agent")
        self.address: str | None = None
        self._server: RunningServer | None = None
        self._renew = False
        self._mark = config.security.mark if config.security is not None else ""

    def start(self) -> None:
        """Adopt what an earlier agent left running, then serve; raises ``ListenError``. Returns without
        serving when the fleet refused the node, or a signal came while it waited for its certificate."""
        config = self._config
        warm_up()
        self.agent.start()
        security, listen = self._security()
        if security is None:
            return
        server = start_server(self.agent, self.guard, listen, security)
        self._server = server
        host = split_address(listen)[0]
        self.address = f"{host}:{server.port}"
        address_file = config.state_dir / "agent" / "address"
        address_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        address_file.write_text(self.address + "\n")
        if config.bus is not None and self.bus is None:
            self._start_bus(config.advertise or self.address, request_certificate=self._renew)
        adopted = len(self.agent.list_replicas())
        how = "mutual TLS" if not security.insecure else "NO TLS: --insecure, for tests on one machine only"
        line = f"node {config.node} serving on {self.address} ({how}); {adopted} replica(s) adopted"
        if security.insecure:
            log.warning("%s%s", security.mark, line)
        else:
            log.info("%s", line)
        notify("READY=1")

    def _start_bus(self, address: str, *, request_certificate: bool) -> AgentBus:
        assert self._config.bus is not None
        self.bus = AgentBus(
            self._config.bus,
            self.agent,
            self._config.state_dir,
            address=address,
            on_refused=self._refused,
            request_certificate=request_certificate,
        )
        self.bus.start()
        return self.bus

    def _security(self) -> tuple[Security | None, str]:
        """How to serve, and where: the given security; or the stored bootstrapped certificate (renewed at
        registration when it expires soon); or, with none, the one registration brings (``None``: no serving)."""
        config = self._config
        if config.security is not None:
            return config.security, config.listen
        found = bootstrap.stored(config.state_dir, config.node)
        if found.security is not None:
            if found.renew:
                log.info(
                    "node %s: its certificate %s; asking the controller for a new one", config.node, found.why
                )
                self._renew = True
            return found.security, config.listen
        listen = resolve_port(config.listen)
        log.info("node %s: %s; joining the fleet for a certificate before serving", config.node, found.why)
        bus = self._start_bus(config.advertise or listen, request_certificate=True)
        while not bus.joined.wait(0.2):
            if self._stopping.is_set():
                return None, listen
        if bus.certificate is None:
            log.error(
                "node %s: the controller issued no certificate (it runs with --insecure or its own --tls-* files): "
                "give this agent --tls-cert, --tls-key and --tls-ca, or --insecure as the controller does",
                config.node,
            )
            self._refused("no certificate")
            return None, listen
        return bootstrap.stored(config.state_dir, config.node).security, listen

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        self.start()
        watch_until(self._stopping, self.agent.alive)
        self.stop()
        return self.exit_code

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop serving and supervising; the replicas keep running (the next agent adopts them)."""
        if self.bus is not None:
            self.bus.stop()
        if self._server is not None:
            self._server.stop()
        self.agent.close(stop_replicas=False)
        log.info("%snode %s stopped; replicas left running", self._mark, self._config.node)

    def _nudge(self) -> None:
        if self.bus is not None:
            self.bus.nudge()

    def _refused(self, reason: str) -> None:
        self.exit_code = 1
        self._stopping.set()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()
