"""The agent's side of the bus, for ``fleetd agent --nats URL``: connect (retrying while the bus is away),
join the fleet (token the first time, credential after), then heartbeat every 2 s and on every replica event.

It runs on its own thread so the gRPC command path and the supervision of replicas never wait on the bus: a
node whose bus is down keeps serving and keeps being commanded. A refused registration is final: the agent
says why in its log and stops (``on_refused``), since a node the fleet refuses must not run as if admitted.
With ``request_certificate`` (TLS bootstrap) the registration asks for a certificate too; ``joined`` is set
once registered, and ``certificate`` then says where the new one is (``None``: the controller issued none).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetd.agent.heartbeats import HeartbeatSender
from fleetd.agent.joining import JoinRefused, join
from fleetd.agent.local import LocalAgent
from fleetd.transport.bus_api import BusError
from fleetd.transport.bus_messages import node_key
from fleetd.transport.nats_bus import NatsBus
from fleetd.transport.security import TlsFiles

log = logging.getLogger("fleetd.agent")
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class BusSettings:
    url: str
    token_file: Path | None = None


class AgentBus:
    def __init__(
        self,
        settings: BusSettings,
        agent: LocalAgent,
        state_dir: Path,
        *,
        address: str,
        on_refused: Callable[[str], None],
        request_certificate: bool = False,
    ) -> None:
        self._settings = settings
        self._agent = agent
        self._state_dir = state_dir
        self._address = address
        self._on_refused = on_refused
        self._request_certificate = request_certificate
        self._stop = threading.Event()
        self.joined = threading.Event()
        self.certificate: TlsFiles | None = None
        self._bus: NatsBus | None = None
        self.sender: HeartbeatSender | None = None
        self._thread = threading.Thread(target=self._run, name="fleetd-agent-bus", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """A replica's state changed: beat now."""
        if self.sender is not None:
            self.sender.nudge()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if self.sender is not None:
            self.sender.stop()
        if self._bus is not None:
            self._bus.close()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._bus = self._bus or NatsBus.connect(
                    self._settings.url, name=f"fleetd-agent-{self._agent.node}"
                )
                joined = join(
                    self._bus,
                    self._agent.node,
                    self._state_dir,
                    address=self._address,
                    token_file=self._settings.token_file,
                    request_certificate=self._request_certificate,
                )
            except JoinRefused as exc:
                log.error("node %s: the fleet refused to admit it: %s", self._agent.node, exc)
                self._on_refused(str(exc))
                return
            except BusError as exc:
                log.warning("node %s: cannot join yet (%s); trying again in %.0f s", self._agent.node, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            issued = f"; certificate stored in {joined.certificate.cert.parent}" if joined.certificate else ""
            log.info("node %s joined the fleet: %s%s", self._agent.node, joined.status, issued)
            self.certificate = joined.certificate
            self.joined.set()
            self.sender = HeartbeatSender(
                self._agent.node,
                node_key(joined.credential),
                self._bus.publish,
                report=self._agent.health,
                replicas=self._agent.list_replicas,
            )
            self.sender.start()
            return
