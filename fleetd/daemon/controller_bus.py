"""The controller's side of the bus, for ``fleetd serve --nats URL`` or ``--nats-listen HOST:PORT`` (which runs the
bundled ``nats-server`` as a supervised child): answer registrations and ingest heartbeats (architecture.md §3).

Both subscriptions are in the ``fleetd-controllers`` queue group, so with several controllers each message is
handled once, by any of them: neither needs the lease (spending a token and writing a heartbeat are single
atomic writes of observations, not decisions). A heartbeat batch that changed what the planner sees triggers
a cycle through ``on_change``. With the fleet's CA (``authority``), registrations get their certificates
signed (the TLS bootstrap); without it (``--insecure``, or ``--tls-*`` files), none are issued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fleetd.controlling.admission import QUEUE, Admission
from fleetd.controlling.heartbeats import (
    LOST_AFTER_MS,
    UNHEALTHY_AFTER_MS,
    HeartbeatIngest,
    registry_all_keys,
    registry_keys,
)
from fleetd.daemon.nats_server import BundledNats
from fleetd.registry.facade import Registry
from fleetd.transport.bus_api import Subscription
from fleetd.transport.bus_messages import HEARTBEATS
from fleetd.transport.certificates import Authority
from fleetd.transport.nats_bus import NatsBus

log = logging.getLogger("fleetd.controller")


class ControllerBus:
    def __init__(
        self,
        registry: Registry,
        state_dir: Path,
        *,
        url: str | None,
        listen: tuple[str, int] | None,
        on_change: Callable[[], None],
        say: Callable[[str], None],
        unhealthy_after_ms: int = UNHEALTHY_AFTER_MS,
        lost_after_ms: int = LOST_AFTER_MS,
        authority: Authority | None = None,
    ) -> None:
        self._registry = registry
        self._state_dir = state_dir
        self._url = url
        self._listen = listen
        self._say = say
        self.server: BundledNats | None = None
        self.bus: NatsBus | None = None
        self.admission = Admission(registry, authority=authority)
        self.ingest = HeartbeatIngest(
            registry,
            registry_keys(registry),
            on_change=on_change,
            unhealthy_after_ms=unhealthy_after_ms,
            lost_after_ms=lost_after_ms,
            all_keys=registry_all_keys(registry),
        )
        self._subscriptions: list[Subscription] = []

    def start(self) -> None:
        """Raises ``BusError`` / ``NatsServerError`` with a one-line message when the bus cannot be had."""
        url = self._url
        if self._listen is not None:
            self.server = BundledNats(self._listen[0], self._listen[1], self._state_dir)
            self.server.start()
            url = self.server.url
            self._say(f"NATS server (bundled) on {url}")
        assert url is not None
        self.bus = NatsBus.connect(url, name="fleetd-controller", on_state=lambda s: self._say(f"NATS {s}"))
        self._subscriptions = [
            self.admission.listen(self.bus),
            self.bus.subscribe(HEARTBEATS, lambda m: self._offer(m.data), queue=QUEUE),
        ]
        self.ingest.start()
        self._say(f"bus {url}: answering registrations, ingesting heartbeats")

    def stop(self) -> None:
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self.ingest.stop()
        if self.bus is not None:
            self.bus.close()
        if self.server is not None:
            self.server.stop()

    def _offer(self, data: bytes) -> None:
        self.ingest.offer(data)
