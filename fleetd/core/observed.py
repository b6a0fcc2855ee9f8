"""The observed state: what the registry, agent reports and probes say the fleet looks like now.

This is the planner's second input and the format of ``fleetd status --format json`` / ``plan --observed``
(architecture.md §5). ``fingerprint`` hashes exactly what a plan depends on, so that a saved plan can be
refused as stale when any of it changed, and only then.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from types import MappingProxyType

from fleetd.core.canonical import plain_digest
from fleetd.core.desired import Labels


class NodeStatus(enum.StrEnum):
    REGISTERING = "registering"
    PENDING = "pending"
    """Registered, waiting for approval (by the manifest or a person)."""
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    """Missed heartbeats; replicas stay where they are until the node is declared lost."""
    DRAINING = "draining"
    OFFLINE = "offline"


class ReplicaState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ObservedNode:
    """A node as last reported. ``available_vram`` is what the node reports free (it already excludes the
    VRAM of replicas running there); ``reserved_vram`` is held by loads still in flight."""

    name: str
    status: NodeStatus
    labels: Labels = ()
    gpu_vendor: str = "none"
    total_vram: int = 0
    available_vram: int = 0
    reserved_vram: int = 0
    total_ram: int = 0
    available_ram: int = 0
    max_replicas_per_model: int = 1
    backends: tuple[str, ...] = ()
    approved: bool = False
    last_error: str | None = None
    """Why the node's agent did not answer the last observation (``None`` once it answers again); a reading,
    not part of the fingerprint."""
    missing_models: frozenset[str] = frozenset()
    """Model paths of the manifest that this node's agent said it does not have. Asked when a plan would load
    there (``fleetd.controlling.model_checks``); a reading like free VRAM, not part of the fingerprint."""

    @property
    def free_vram(self) -> int:
        """What a new placement may use: reported free minus what in-flight loads reserved."""
        return max(0, self.available_vram - self.reserved_vram)


@dataclass(frozen=True, slots=True)
class ObservedReplica:
    """One replica process of an instance on a node."""

    instance: str
    node: str
    replica: int
    state: ReplicaState
    address: str | None = None
    config_hash: str = ""
    vram_bytes: int = 0
    in_flight: int = 0
    last_used: str | None = None
    """ISO 8601 UTC timestamp of the last request, or ``None`` when it never served one."""
    restarts: int = 0
    last_error: str | None = None
    state_since: str | None = None
    """ISO 8601 UTC timestamp of the last change of ``state``, or ``None`` when unknown (a registry from before
    it was kept). A live reading like ``last_used``: not part of the fingerprint."""
    restart_requested: bool = False
    """A person asked for a restart (``fleetd replica restart``); an input, like in-flight, not in the fingerprint."""
    replaced: bool = False
    """Forgotten while its node was lost (and replaced elsewhere), then reported again by the returning node: the
    first to go when the instance has more replicas than it needs."""


@dataclass(frozen=True, slots=True)
class SchedulingRecord:
    """Placement hysteresis of one instance: consecutive ticks it could not be placed, and the cooldown."""

    instance: str
    unsatisfiable_ticks: int = 0
    cooldown_until: str | None = None
    capacity: str = ""
    """Digest of the fleet's placement structure when the record was written; a change ends the cooldown."""
    reasons: tuple[tuple[str, int], ...] = ()
    """Why the last attempted placement failed (``Unschedulable.reasons``): kept through the cooldown, so a plan
    made while nothing is attempted still says what stands in the way, not only ``cooldown``."""


@dataclass(frozen=True)
class ObservedState:
    """Nodes, replicas and scheduling records, each sorted by identity."""

    nodes: tuple[ObservedNode, ...] = ()
    replicas: tuple[ObservedReplica, ...] = ()
    scheduling: tuple[SchedulingRecord, ...] = ()

    @cached_property
    def fingerprint(self) -> str:
        """Digest of the structure plans are made on; live readings are left out.

        Included: each node's identity, status, approval, labels, backends, slots, GPU vendor and total VRAM;
        each replica's identity, state, address and config hash; the scheduling records. Left out: free VRAM
        and RAM, reservations, in-flight counts, last use, restart counts, errors and when a replica's state last
        changed. Those change with every heartbeat, so a saved plan would always be stale; instead the executor
        re-checks capacity atomically (VRAM reservations) when it applies, so a plan made on older readings can
        fail a step but never over-commit a node.

        Independent of the order of nodes, replicas and records. Computed once per value (a snapshot is
        immutable), as ``digest`` of the same data, written as plain data so that no generic walk is needed.
        """
        replicas = sorted(
            (r.instance, r.node, r.replica, r.state.value, r.address, r.config_hash) for r in self.replicas
        )
        scheduling = [
            {
                "instance": s.instance,
                "unsatisfiable_ticks": s.unsatisfiable_ticks,
                "cooldown_until": s.cooldown_until,
                "capacity": s.capacity,
                "reasons": [list(pair) for pair in s.reasons],
            }
            for s in sorted(self.scheduling, key=lambda s: s.instance)
        ]
        return plain_digest((self.placement_digest, replicas, scheduling))

    @cached_property
    def placement_digest(self) -> str:
        """Digest of the nodes' placement structure: identity, status, approval, labels, backends, slots, GPU
        vendor and total VRAM, whatever order the nodes come in. The scheduling hysteresis ends a cooldown when
        it changes."""
        return plain_digest(
            tuple(
                (
                    n.name,
                    n.status.value,
                    n.approved,
                    n.labels,
                    n.backends,
                    n.max_replicas_per_model,
                    n.gpu_vendor,
                    n.total_vram,
                )
                for n in sorted(self.nodes, key=lambda n: n.name)
            )
        )

    @cached_property
    def nodes_by_name(self) -> Mapping[str, ObservedNode]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def replicas_by_instance(self) -> Mapping[str, tuple[ObservedReplica, ...]]:
        """Each instance's replicas sorted by (node, index); built once per snapshot, as the planner reads it on
        every tick."""
        return _grouped(self.replicas, lambda r: r.instance)

    @cached_property
    def replicas_by_node(self) -> Mapping[str, tuple[ObservedReplica, ...]]:
        return _grouped(self.replicas, lambda r: r.node)

    def node(self, name: str) -> ObservedNode | None:
        return self.nodes_by_name.get(name)

    def replicas_of(self, instance: str) -> tuple[ObservedReplica, ...]:
        return self.replicas_by_instance.get(instance, ())


def with_missing_models(observed: ObservedState, missing: Mapping[str, frozenset[str]]) -> ObservedState:
    """``observed`` with each named node's missing model paths added; the same value when none is missing (so
    its computed fingerprint and indexes are kept)."""
    if not any(missing.values()):
        return observed
    nodes = tuple(
        replace(n, missing_models=n.missing_models | missing[n.name]) if missing.get(n.name) else n
        for n in observed.nodes
    )
    return replace(observed, nodes=nodes)


def _grouped(
    replicas: tuple[ObservedReplica, ...], key: Callable[[ObservedReplica], str]
) -> Mapping[str, tuple[ObservedReplica, ...]]:
    groups: dict[str, list[ObservedReplica]] = {}
    for replica in sorted(replicas, key=lambda r: (r.instance, r.node, r.replica)):
        groups.setdefault(key(replica), []).append(replica)
    return MappingProxyType({name: tuple(group) for name, group in groups.items()})
