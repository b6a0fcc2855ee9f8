"""``status_once``: what the fleet looks like now and whether it matches the manifest, as Argo CD reports an
application: sync (``Synced`` / ``OutOfSync``: would a plan be empty?) and health (``Healthy`` /
``Progressing`` / ``Degraded``). The plan comes from ``plan_once``, the same path ``apply`` takes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from fleetd.controlling.cycles import plan_once
from fleetd.controlling.fleets import Fleet
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState, ReplicaState
from fleetd.manifest.revision import Revision
from fleetd.planning.planner import PlanPolicy
from fleetd.planning.rendering import unschedulable_line


class Sync(enum.StrEnum):
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """Sync (only with a manifest) and health of one observation."""

    health: Health
    sync: Sync | None = None
    pending_actions: int | None = None
    unschedulable_replicas: int = 0
    unschedulable: tuple[str, ...] = ()
    """One line per instance that cannot be placed, with its reasons (``unschedulable_line``)."""
    notes: tuple[str, ...] = ()
    """The plan's notes: failed replicas, missing model files, replicas that cannot be moved."""
    manifest_paths: tuple[str, ...] = ()
    revision: Revision | None = None
    undeclared_nodes: tuple[str, ...] = ()
    """Nodes the registry knows that a manifest declaring ``nodes`` does not list: nothing is placed there and
    their replicas are moved off."""

    def document(self) -> dict[str, Any]:
        return {
            "sync": self.sync.value if self.sync is not None else None,
            "pending_actions": self.pending_actions,
            "unschedulable_replicas": self.unschedulable_replicas,
            "unschedulable": list(self.unschedulable),
            "notes": list(self.notes),
            "health": self.health.value,
            "manifest": list(self.manifest_paths) if self.manifest_paths else None,
            "revision": self.revision.document() if self.revision is not None else None,
            "undeclared_nodes": list(self.undeclared_nodes),
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """The manifest a status compares with: its desired state, where it is, and its revision."""

    desired: DesiredState
    paths: tuple[str, ...]
    revision: Revision | None


def status_once(
    fleet: Fleet, manifest: Manifest | None, *, observed: ObservedState | None = None
) -> tuple[ObservedState, FleetStatus]:
    """Observe the fleet (unless ``observed`` is given) and, with a manifest, plan against it."""
    seen = fleet.observe() if observed is None else observed
    if manifest is None:
        return seen, FleetStatus(fleet_health(seen, 0))
    planned = plan_once(fleet, manifest.desired, policy=PlanPolicy(allow_empty=True), observed=seen)
    pending = len(planned.plan.actions)
    unschedulable = sum(u.missing for u in planned.plan.unschedulable)
    return seen, FleetStatus(
        health=fleet_health(seen, unschedulable),
        sync=Sync.SYNCED if pending == 0 else Sync.OUT_OF_SYNC,
        pending_actions=pending,
        unschedulable_replicas=unschedulable,
        unschedulable=tuple(unschedulable_line(u) for u in planned.plan.unschedulable),
        notes=planned.plan.notes,
        manifest_paths=manifest.paths,
        revision=manifest.revision,
        undeclared_nodes=undeclared_nodes(manifest.desired, seen),
    )


def undeclared_nodes(desired: DesiredState, observed: ObservedState) -> tuple[str, ...]:
    """Registered nodes that a manifest declaring ``nodes`` does not list (none when it declares none)."""
    if not desired.nodes_declared:
        return ()
    declared = {n.name for n in desired.nodes}
    return tuple(sorted(n.name for n in observed.nodes if n.name not in declared))


def fleet_health(observed: ObservedState, unschedulable_replicas: int) -> Health:
    """Degraded when a replica is unhealthy or failed or one cannot be placed; Progressing while one starts or
    stops; Healthy otherwise (every replica running)."""
    states = {r.state for r in observed.replicas}
    if unschedulable_replicas or states & {ReplicaState.UNHEALTHY, ReplicaState.FAILED}:
        return Health.DEGRADED
    if states & {ReplicaState.STARTING, ReplicaState.STOPPING}:
        return Health.PROGRESSING
    return Health.HEALTHY
