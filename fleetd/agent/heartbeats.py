"""The agent's heartbeat: its node's facts, backends and replicas, signed, on the bus every 2 s
(architecture.md §3).

A heartbeat is the node saying "I am here, and this is what I run"; the controller writes it to the registry
and marks a silent node unhealthy, then lost. It carries a ``boot`` id (new for every agent process) and a
sequence number, so the controller can refuse a replayed or late beat without trusting clocks. A beat is also
sent at once when a replica's state changes, so a crash reaches the controller in milliseconds rather than at
the next tick. Publishing never blocks supervision and never raises: while the bus is down, beats are simply
lost, and the replicas keep serving.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from fleetd.transport.agent_api import NodeReport, ReplicaStatus
from fleetd.transport.bus_messages import heartbeat_subject
from fleetd.transport.heartbeat_wire import HeartbeatMessage, ReplicaSummary, encode_heartbeat

log = logging.getLogger("fleetd.agent")
HEARTBEAT_INTERVAL_S = 2.0

Publish = Callable[[str, bytes], None]


class HeartbeatSender:
    """Sends the node's heartbeat every ``interval_s`` and on ``nudge()``; thread-safe."""

    def __init__(
        self,
        node: str,
        key: bytes,
        publish: Publish,
        *,
        report: Callable[[], NodeReport],
        replicas: Callable[[], tuple[ReplicaStatus, ...]],
        interval_s: float = HEARTBEAT_INTERVAL_S,
    ) -> None:
        self._node = node
        self._key = key
        self._publish = publish
        self._report = report
        self._replicas = replicas
        self._interval_s = interval_s
        self._boot = uuid.uuid4().hex[:16]
        self._seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleetd-heartbeat", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Send a beat now (a replica's state changed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def send(self) -> None:
        """Build, sign and publish one beat (the loop's step; callable directly)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        report = self._report()
        message = HeartbeatMessage(
            node=self._node,
            seq=seq,
            boot=self._boot,
            sent_ms=time.time_ns() // 1_000_000,
            gpu_vendor=report.gpu_vendor,
            total_vram=report.total_vram,
            available_vram=report.available_vram,
            total_ram=report.total_ram,
            available_ram=report.available_ram,
            backends=tuple(sorted(report.backends)),
            replicas=tuple(summary(s) for s in self._replicas()),
        )
        self._publish(heartbeat_subject(self._node), encode_heartbeat(message, self._key))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.send()
            except Exception:  # a failing reading must not end the heartbeat; the next tick tries again
                log.exception("building a heartbeat failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()


def summary(status: ReplicaStatus) -> ReplicaSummary:
    return ReplicaSummary(
        instance=status.instance,
        replica=status.replica,
        state=status.state,
        config_hash=status.config_hash,
        address=status.address,
        in_flight=status.in_flight,
        last_used_ms=status.last_used_ms,
        restarts=status.restarts,
        vram_bytes=status.vram_bytes,
        last_error=status.last_error,
    )
