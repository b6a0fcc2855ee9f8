"""``DistributedFleet``: one controller driving many nodes, each through its ``fleetd agent`` (architecture.md §3).

The manifest says which mode a fleet is in: a node declared with an ``address`` has an agent there, reached
over gRPC (``GrpcAgentClient``). A fleet with such nodes is distributed; the one declared node without an
address, if there is exactly one, is this machine, served by the in-process agent as in the embedded mode.

``observe()`` asks every agent for its facts and replicas at once, on a thread pool, each call under its own
deadline: a slow or hung node costs the observation at most that deadline and never delays the others. What a
node answers is recorded exactly as the embedded agent's report is (a heartbeat, its backends, its replica
rows). A node that does not answer keeps its rows, is marked ``unhealthy`` with the error (nothing new is
placed there; ``fleetd status`` shows why), and only after ``offline_after_ms`` of silence is it ``offline``
and its replicas re-placed. When more than half of the nodes fail together, the controller's own network is
the likelier culprit: they are marked unhealthy but none is taken offline (Kubernetes' unhealthy-zone rule).

``agents`` holds the nodes that answered the last observation, so an action for a silent node fails at once
("not connected") instead of waiting on its deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fleetd.agent.local import LocalAgent
from fleetd.controlling.embedded import SETTLE_TIMEOUT_S
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState, ReplicaState
from fleetd.executing.records import heartbeat, node_facts, replica_record
from fleetd.registry.agent_reports import record_report, sync_replicas
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import NodeFacts
from fleetd.transport.agent_api import AgentClient, AgentError, CallerFence, NodeReport, ReplicaStatus
from fleetd.transport.grpc_client import CALL_TIMEOUT_S, GrpcAgentClient
from fleetd.transport.security import Security

log = logging.getLogger("fleetd.controller")

UNHEALTHY_AFTER_MS = 6_000
OFFLINE_AFTER_MS = 20_000


class LayoutError(ValueError):
    """The manifest's nodes cannot be reached as declared; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How the nodes are reached: ``remote`` (name, address) pairs declared in the manifest, ``joined`` ones
    admitted over the bus (their agent told its address when it registered), and the node that this machine's
    in-process agent serves (``None``: none). With ``bus`` (this controller ingests heartbeats), the joined nodes
    are observed through their heartbeats and not polled (``beating``); every other remote node is polled."""

    remote: tuple[tuple[str, str], ...] = ()
    local: str | None = None
    unreachable: tuple[str, ...] = ()
    """Declared nodes without an address that are not this machine: nothing can command them."""
    joined: tuple[tuple[str, str], ...] = ()
    bus: bool = False
    """This controller runs a bus: the fleet is distributed even before the first node joins."""

    @property
    def distributed(self) -> bool:
        return bool(self.remote or self.joined or self.bus)

    @property
    def addresses(self) -> dict[str, str]:
        """Every remote node's address; the manifest's word wins over the address a node registered."""
        return {**dict(self.joined), **dict(self.remote)}

    @property
    def beating(self) -> frozenset[str]:
        """The nodes observed through their heartbeats: the joined ones, when this controller runs the bus's
        ingest; without it (a one-shot command, ``serve`` without ``--nats``) they are polled like the others."""
        return frozenset(name for name, _ in self.joined) if self.bus else frozenset()


def layout_of(
    desired: DesiredState | None, *, joined: tuple[tuple[str, str], ...] = (), bus: bool = False
) -> Layout:
    """Distributed when a declared node has an address, a node joined over the bus, or a bus runs; the
    in-process agent serves the one declared node without an address (none when there are several: which one is
    this machine is then ambiguous; nor, with a bus, when the manifest declares no node at all)."""
    declared = desired.nodes if desired is not None else ()
    remote = tuple(sorted((n.name, n.address) for n in declared if n.address))
    if not (remote or joined or bus):
        return Layout()
    addressless = sorted(n.name for n in declared if not n.address and n.name not in dict(joined))
    if len(addressless) == 1:
        return Layout(remote, addressless[0], joined=joined, bus=bus)
    return Layout(remote, None, tuple(addressless), joined=joined, bus=bus)


@dataclass(frozen=True, slots=True)
class _Answer:
    node: str
    report: NodeReport | None = None
    replicas: tuple[ReplicaStatus, ...] = ()
    error: str | None = None


class DistributedFleet:
    """The ``Fleet`` of the distributed mode. Used by one thread at a time (a cycle), like every fleet."""

    def __init__(
        self,
        registry: Registry,
        security: Security,
        *,
        layout: Callable[[], Layout],
        fence: Callable[[], CallerFence | None],
        local: LocalAgent | None = None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        unhealthy_after_ms: int = UNHEALTHY_AFTER_MS,
        offline_after_ms: int = OFFLINE_AFTER_MS,
        sweeps: bool = True,
    ) -> None:
        """``layout`` is read at every observation (``fleetd serve`` follows manifest edits and joins);
        ``fence`` at every mutating call; ``local`` serves ``layout().local`` in-process. ``sweeps``: age the
        silent nodes after each observation; off when a bus's heartbeat ingest does it (one rule, one place)."""
        self.registry = registry
        self._security = security
        self._layout = layout
        self._fence = fence
        self._local = local
        self._call_timeout_s = call_timeout_s
        self._unhealthy_after_ms = unhealthy_after_ms
        self._offline_after_ms = offline_after_ms
        self._sweeps = sweeps
        self._probed: set[str] = set()
        self._clients: dict[str, GrpcAgentClient] = {}
        self._answered: dict[str, AgentClient] = {}
        self._facts: dict[str, NodeFacts] = {}
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fleetd-observe")
        self.errors: dict[str, str] = {}
        """Why each node that did not answer the last observation did not (also in its registry row)."""

    @property
    def agents(self) -> Mapping[str, AgentClient]:
        return dict(self._answered)

    @property
    def local(self) -> LocalAgent | None:
        return self._local

    def observe(self) -> ObservedState:
        layout = self._layout()
        self._follow(layout)
        beating = layout.beating
        polled: dict[str, AgentClient] = {n: c for n, c in self._clients.items() if n not in beating}
        if self._local is not None and layout.local is not None:
            polled[layout.local] = self._local
        probed = {n: self._clients[n] for n in sorted(beating) if n not in self._probed or n in self.errors}
        answers = list(self._pool.map(_ask, [*polled.values(), *probed.values()]))
        addresses = layout.addresses
        for answer in answers:
            if answer.node in probed:
                self._probed.add(answer.node)
                self._record_probe(answer)
            else:
                self._record(answer, addresses.get(answer.node))
        self._answered = {a.node: polled[a.node] for a in answers if a.error is None and a.node in polled}
        self._answered.update((n, self._clients[n]) for n in beating if n not in self.errors)
        if self._sweeps:
            polled_answers = [a for a in answers if a.node in polled]
            self._sweep(failed=sum(1 for a in polled_answers if a.error is not None), total=len(polled_answers))
        return self.registry.snapshot()

    def observe_settled(self, *, timeout_s: float = SETTLE_TIMEOUT_S) -> ObservedState:
        """``observe()`` once the in-process agent's adopted replicas had their first probe (see
        ``EmbeddedFleet.observe_settled``); remote agents settle their own on start."""
        deadline = time.monotonic() + timeout_s
        while (
            self._local is not None
            and time.monotonic() < deadline
            and any(r.state is ReplicaState.STARTING for r in self._local.list_replicas())
        ):
            time.sleep(0.05)  # polling the supervisor's verdict with a deadline
        return self.observe()

    def close(self, *, stop_replicas: bool = False) -> None:
        """Close the channels and the in-process agent; remote agents and their replicas keep running."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._local is not None:
            self._local.close(stop_replicas=stop_replicas)
        self.registry.engine.dispose()

    # helpers --------------------------------------------------------------------------------------------------

    def _follow(self, layout: Layout) -> None:
        """One client per remote node, at its address (a changed address gets a new one, probed again)."""
        wanted = layout.addresses
        for name in [n for n, c in self._clients.items() if wanted.get(n) != c.address]:
            self._clients.pop(name).close()
            self._facts.pop(name, None)
            self._probed.discard(name)
        for name, address in wanted.items():
            if name not in self._clients:
                self._clients[name] = GrpcAgentClient(
                    name, address, self._security, fence=self._fence, call_timeout_s=self._call_timeout_s
                )
        for name in layout.unreachable:
            self.errors[name] = (
                f"node {name} declares no address, and this controller serves only one node without one: "
                "give it the address of its `fleetd agent`"
            )

    def _record(self, answer: _Answer, address: str | None) -> None:
        if answer.error is not None:
            if self.errors.get(answer.node) != answer.error:
                log.warning("%s", answer.error)
            self.errors[answer.node] = answer.error
            self.registry.mark_unreachable(answer.node, answer.error)
            return
        assert answer.report is not None
        known = self._facts.get(answer.node)
        failed_before = self.errors.pop(answer.node, None) is not None
        if failed_before:
            log.info("node %s answers again", answer.node)
        if failed_before or known is None:  # its row may also keep an error from before this controller
            self.registry.clear_node_error(answer.node)
        facts = node_facts(answer.report)
        if known is None or (known.gpu_vendor, known.total_vram, known.total_ram) != (
            facts.gpu_vendor,
            facts.total_vram,
            facts.total_ram,
        ):
            self.registry.register_node(answer.node, facts, address=address)
            self._facts[answer.node] = facts
        record_report(self.registry, heartbeat(answer.report), answer.report.backends)
        sync_replicas(self.registry, answer.node, [replica_record(answer.node, s) for s in answer.replicas])

    def _record_probe(self, answer: _Answer) -> None:
        """A node that beats over the bus was asked for its health once (new to this controller, or its gRPC
        path failed before): its heartbeats say it lives, so a failure here means the controller cannot command
        it; it is ``unhealthy`` with that reason until a later probe gets through."""
        if answer.error is None:
            if self.errors.pop(answer.node, None) is not None:
                log.info("node %s answers over gRPC again", answer.node)
                self.registry.clear_node_error(answer.node)
            return
        if self.errors.get(answer.node) != answer.error:
            log.warning("%s (its heartbeats arrive: the gRPC path to it fails)", answer.error)
        self.errors[answer.node] = answer.error
        self.registry.mark_unreachable(answer.node, answer.error)

    def _sweep(self, *, failed: int, total: int) -> None:
        """Age silent nodes: unhealthy, then offline, unless most nodes went silent together."""
        zone_outage = total > 1 and failed * 2 > total
        if zone_outage:
            log.warning(
                "%d of %d nodes did not answer: suspecting this controller's network, not the nodes; none is "
                "taken offline and nothing is re-placed until they answer",
                failed,
                total,
            )
        offline_after = self._offline_after_ms if not zone_outage else 10**15
        self.registry.mark_missed_heartbeats(
            unhealthy_after_ms=self._unhealthy_after_ms, offline_after_ms=offline_after
        )


def _ask(agent: AgentClient) -> _Answer:
    """The node's facts and replicas, or why it did not answer (each call under the client's deadline)."""
    try:
        report = agent.health()
        if report.node != agent.node:
            raise AgentError(f"node {agent.node}: the agent there reports itself as node {report.node}")
        return _Answer(agent.node, report, agent.list_replicas())
    except AgentError as exc:
        return _Answer(agent.node, error=str(exc))
