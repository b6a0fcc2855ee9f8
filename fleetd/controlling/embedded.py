"""The embedded mode (architecture.md §3): a SQLite registry under the state dir and one in-process agent for
the local node, so that ``fleetd apply``, ``fleetd status`` and ``fleetd serve`` share one code path.

``observe()`` is the first step of every reconcile cycle: the agent is the truth about its own processes, so
its node facts become a heartbeat, its installed backends the node's backend list, and its replicas the
replica rows. ``observe_settled`` waits for the replicas the agent adopted on start to get their first probe.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetd.agent.installing import installed_backends
from fleetd.agent.local import LocalAgent
from fleetd.agent.node_facts import read_node_facts
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedState, ReplicaState
from fleetd.executing.records import heartbeat, node_facts, replica_record
from fleetd.registry import nodes
from fleetd.registry.agent_reports import record_report, sync_replicas
from fleetd.registry.engine import default_state_dir
from fleetd.registry.facade import Registry, open_registry
from fleetd.transport.agent_api import AgentClient

LOCAL_NODE = "local"
"""The node name of the embedded mode's machine (a manifest without ``nodes`` uses it implicitly)."""
SETTLE_TIMEOUT_S = 10.0
"""How long an observation waits for replicas adopted as ``starting`` to get their first probe."""


@dataclass(frozen=True)
class EmbeddedFleet:
    registry: Registry
    agent: LocalAgent
    state_dir: Path

    @property
    def node(self) -> str:
        return self.agent.node

    @property
    def agents(self) -> Mapping[str, AgentClient]:
        return {self.agent.node: self.agent}

    def observe(self) -> ObservedState:
        """Refresh the registry from the local agent, then take a snapshot."""
        report = self.agent.health()
        record_report(self.registry, heartbeat(report), report.backends)
        sync_replicas(self.registry, self.node, [replica_record(self.node, s) for s in self.agent.list_replicas()])
        return self.registry.snapshot()

    def observe_settled(self, *, timeout_s: float = SETTLE_TIMEOUT_S) -> ObservedState:
        """``observe()`` once the replicas the agent adopted on start have had their first probe.

        An agent adopts a running replica as ``starting`` until a probe says otherwise; observing at once would
        report a healthy fleet as progressing, and change the observed fingerprint that a saved plan was made
        on. A replica still starting after ``timeout_s`` (a slow load) is reported as it is.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
            r.state is ReplicaState.STARTING for r in self.agent.list_replicas()
        ):
            time.sleep(0.05)  # polling the supervisor's verdict with a deadline
        return self.observe()

    def close(self, *, stop_replicas: bool = False) -> None:
        self.agent.close(stop_replicas=stop_replicas)
        self.registry.engine.dispose()


def open_embedded(
    state_dir: Path | None = None,
    *,
    database_url: str | None = None,
    node: str = LOCAL_NODE,
    on_replica_change: Callable[[], None] | None = None,
) -> EmbeddedFleet:
    """Open the registry, start the local agent (adopting running replicas) and register the node, approved:
    in the embedded mode the machine fleetd runs on is trusted by definition. ``on_replica_change`` hears the
    agent's replica events (``fleetd serve`` runs a cycle on each)."""
    state = state_dir or default_state_dir()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = open_registry(database_url or f"sqlite:///{state / 'fleetd.db'}")
    agent = LocalAgent(node, state, on_replica_change=on_replica_change)
    agent.start()
    report = agent.health()
    registry.register_node(node, node_facts(report))
    registry.approve_node(node)
    record_report(registry, heartbeat(report), report.backends)
    return EmbeddedFleet(registry, agent, state)


def preview_local_node(observed: ObservedState, state_dir: Path | None = None) -> ObservedState:
    """``observed`` with this machine as the local node when the registry does not know it yet.

    It is what the first ``apply`` or ``serve`` registers, read without starting an agent or writing anything,
    so that ``fleetd plan`` on a fresh machine plans placements instead of calling every instance
    unschedulable.
    """
    if any(node.name == LOCAL_NODE for node in observed.nodes):
        return observed
    report = read_node_facts(LOCAL_NODE, backends=installed_backends(state_dir=state_dir or default_state_dir()))
    facts = node_facts(report)
    slots = 1  # what registration sets (register_node's default): a manifest without nodes sets none
    node = ObservedNode(
        name=LOCAL_NODE,
        status=NodeStatus.HEALTHY,
        labels=tuple(sorted(nodes.auto_labels(LOCAL_NODE, facts, slots).items())),
        max_replicas_per_model=slots,
        backends=tuple(sorted(report.backends)),
        approved=True,
        **dataclasses.asdict(facts),
    )
    return dataclasses.replace(observed, nodes=tuple(sorted((*observed.nodes, node), key=lambda n: n.name)))
