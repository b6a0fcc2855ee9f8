"""Agent reports as registry values: the one translation from what an ``AgentClient`` says to what the
registry stores, used by the executor's steps (after a start) and by the controlling layer's observations."""

from __future__ import annotations

from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.registry.replicas import ReplicaRecord
from fleetd.transport.agent_api import NodeReport, ReplicaStatus


def replica_record(node: str, status: ReplicaStatus, *, vram_bytes: int | None = None) -> ReplicaRecord:
    """The registry row for what an agent reports of one replica."""
    return ReplicaRecord(
        instance=status.instance,
        node=node,
        replica=status.replica,
        state=status.state,
        address=status.address,
        pid=status.pid,
        process_start=status.process_start,
        container_id=status.container,
        config_hash=status.config_hash,
        vram_bytes=status.vram_bytes if vram_bytes is None else vram_bytes,
        restarts=status.restarts,
        last_error=status.last_error,
        in_flight=status.in_flight,
        last_used_ms=status.last_used_ms,
    )


def node_facts(report: NodeReport) -> NodeFacts:
    """The facts a node registers with."""
    return NodeFacts(
        gpu_vendor=report.gpu_vendor,
        total_vram=report.total_vram,
        available_vram=report.available_vram,
        total_ram=report.total_ram,
        available_ram=report.available_ram,
    )


def heartbeat(report: NodeReport) -> Heartbeat:
    """The readings of a report, as a heartbeat."""
    return Heartbeat(report.node, report.available_vram, report.available_ram)
