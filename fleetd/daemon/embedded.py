"""The embedded mode (DESIGN.md section 3): a SQLite registry under the state dir and one in-process agent for
the local node, wired so that ``fleetd apply``, ``fleetd status`` and ``fleetd serve`` share one code path.

``observe()`` is the first step of every reconcile cycle: the agent is the truth about its own processes, so
its node facts become a heartbeat, its installed backends the node's backend list, and its replicas the
replica rows (a row the agent does not know any more is removed: the process is gone). The planner then reads
one consistent snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, delete, select

from fleetd.agent.installing import installed_backends
from fleetd.agent.local import LocalAgent
from fleetd.agent.node_facts import read_node_facts
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedState
from fleetd.executing.steps import replica_record
from fleetd.registry import nodes, replicas
from fleetd.registry.engine import default_state_dir
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.tables import node_backends
from fleetd.registry.tables import replicas as replica_rows
from fleetd.transport.agent_api import NodeReport, ReplicaStatus

LOCAL_NODE = "local"
"""The node name of the embedded mode's machine (a manifest without ``nodes`` uses it implicitly)."""


@dataclass(frozen=True)
class Embedded:
    registry: Registry
    agent: LocalAgent
    state_dir: Path

    @property
    def node(self) -> str:
        return self.agent.node

    def observe(self) -> ObservedState:
        """Refresh the registry from the local agent, then take a snapshot."""
        report = self.agent.health()
        record_report(self.registry, report)
        sync_replicas(self.registry, self.node, self.agent.list_replicas())
        return self.registry.snapshot()

    def close(self, *, stop_replicas: bool = False) -> None:
        self.agent.close(stop_replicas=stop_replicas)
        self.registry.engine.dispose()


def open_embedded(
    state_dir: Path | None = None,
    *,
    database_url: str | None = None,
    node: str = LOCAL_NODE,
    on_replica_change: Callable[[], None] | None = None,
) -> Embedded:
    """Open the registry, start the local agent (adopting running replicas) and register the node, approved:
    in the embedded mode the machine fleetd runs on is trusted by definition. ``on_replica_change`` hears the
    agent's replica events (``fleetd serve`` runs a cycle on each)."""
    state = state_dir or default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    registry = open_registry(database_url or f"sqlite:///{state / 'fleetd.db'}")
    agent = LocalAgent(node, state, on_replica_change=on_replica_change)
    agent.start()
    report = agent.health()
    registry.register_node(node, _facts(report))
    registry.approve_node(node)
    record_report(registry, report)
    return Embedded(registry, agent, state)


def preview_local_node(observed: ObservedState, state_dir: Path | None = None) -> ObservedState:
    """``observed`` with this machine as the local node when the registry does not know it yet.

    It is what the first ``apply`` or ``serve`` registers, read without starting an agent or writing anything,
    so that ``fleetd plan`` on a fresh machine plans placements instead of calling every instance
    unschedulable.
    """
    if any(node.name == LOCAL_NODE for node in observed.nodes):
        return observed
    report = read_node_facts(LOCAL_NODE, backends=installed_backends(state_dir=state_dir or default_state_dir()))
    facts = _facts(report)
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


def record_report(registry: Registry, report: NodeReport) -> None:
    """A heartbeat with the report's readings, and the node's installed backends."""
    now = registry.clock()
    with registry.engine.begin() as conn:
        nodes.heartbeat(
            conn, [nodes.Heartbeat(report.node, report.available_vram, report.available_ram)], now_ms=now
        )
        known = set(
            conn.execute(select(node_backends.c.backend).where(node_backends.c.node == report.node)).scalars()
        )
        for backend in report.backends:
            if backend not in known:
                nodes.set_backend_state(conn, report.node, backend, "installed", now_ms=now)


def sync_replicas(registry: Registry, node: str, statuses: tuple[ReplicaStatus, ...]) -> None:
    """Make the node's replica rows what its agent reports."""
    now = registry.clock()
    with registry.engine.begin() as conn:
        seen = {(s.instance, s.replica) for s in statuses}
        for status in statuses:
            replicas.upsert(conn, replica_record(node, status), now_ms=now)
        rows = conn.execute(
            select(replica_rows.c.instance, replica_rows.c.replica).where(replica_rows.c.node == node)
        ).all()
        for instance, index in rows:
            if (instance, index) not in seen:
                conn.execute(
                    delete(replica_rows).where(
                        and_(
                            replica_rows.c.node == node,
                            replica_rows.c.instance == instance,
                            replica_rows.c.replica == index,
                        )
                    )
                )


def _facts(report: NodeReport) -> nodes.NodeFacts:
    return nodes.NodeFacts(
        gpu_vendor=report.gpu_vendor,
        total_vram=report.total_vram,
        available_vram=report.available_vram,
        total_ram=report.total_ram,
        available_ram=report.available_ram,
    )
