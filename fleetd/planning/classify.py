"""Classify: where each observed replica of one instance stands, before anything is planned for it.

The first step of the per-instance pipeline (Nomad's reconciler: classify -> stop -> place). Every replica
that is not already stopping lands in one group:
- staying: on a usable node; a failed one that has not been failed for ``restart_max_delay`` yet stays too,
  with a note;
- moving: on a draining node or one the manifest no longer declares: loaded elsewhere first, then unloaded;
- gone: on a lost node (offline, or unknown to the registry; forgotten by this plan) or evicted by a higher
  priority earlier in this plan: already out of the fleet, replaced without waiting;
- failed: crash-looped past ``max_restarts`` at least ``restart_max_delay`` ago: replaced elsewhere, or
  restarted in place when no other node can take it.
Most replicas are running on a settled node: one dict lookup decides them (the fast path that keeps a
converged tick over 50,000 replicas in tens of milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.core.desired import InstanceSpec
from fleetd.core.observed import NodeStatus, ObservedReplica, ReplicaState
from fleetd.core.timestamps import ms_from_iso
from fleetd.planning.context import Pass
from fleetd.planning.plans import Reason


@dataclass(frozen=True, slots=True)
class Classified:
    staying: tuple[ObservedReplica, ...]
    moving: tuple[tuple[ObservedReplica, Reason], ...]
    """Reason ``drained`` or ``node_undeclared``, in replica order."""
    gone: tuple[tuple[ObservedReplica, Reason], ...]
    """Reason ``node_lost`` or ``evicted``, in replica order."""
    failed: tuple[ObservedReplica, ...]
    settled: bool
    """Every staying replica is running the desired config: no rollout, and every one of them is live."""


def classify(p: Pass, spec: InstanceSpec, want: str, observed: tuple[ObservedReplica, ...]) -> Classified:
    """Sort the instance's replicas (in (node, index) order) into staying, moving, gone and failed; ``want``
    is the desired launch config hash."""
    staying: list[ObservedReplica] = []
    others: list[tuple[ObservedReplica, Reason]] = []
    evicted, settled, running = p.evictions.evicted, p.fleet.settled, ReplicaState.RUNNING
    fresh = 0
    """Replicas that stay by the fast path, running the desired config."""
    for replica in observed:
        if (
            replica.state is running
            and not replica.restart_requested
            and settled[replica.node]
            and not (evicted and (replica.instance, replica.node, replica.replica) in evicted)
        ):
            staying.append(replica)  # the common case, decided as ``_where`` would decide it
            fresh += replica.config_hash == want
            continue
        if replica.state is ReplicaState.STOPPING:
            continue
        reason = _where(p, spec, replica)
        if reason is None:
            staying.append(replica)
        else:
            others.append((replica, reason))
    if not others:  # the common case: nothing moves
        return Classified(tuple(staying), (), (), (), fresh == len(staying))
    return Classified(
        staying=tuple(staying),
        moving=tuple((r, why) for r, why in others if why in (Reason.DRAINED, Reason.NODE_UNDECLARED)),
        gone=tuple((r, why) for r, why in others if why in (Reason.NODE_LOST, Reason.EVICTED)),
        failed=tuple(r for r, why in others if why is Reason.FAILED),
        settled=fresh == len(staying),
    )


def _where(p: Pass, spec: InstanceSpec, replica: ObservedReplica) -> Reason | None:
    """Why a replica off the fast path leaves its place (``None``: it stays)."""
    if (replica.instance, replica.node, replica.replica) in p.evictions.evicted:
        return Reason.EVICTED
    node = p.inputs.observed.nodes_by_name.get(replica.node)
    if node is None or node.status is NodeStatus.OFFLINE:
        return Reason.NODE_LOST
    if p.fleet.undeclared(node.name):
        return Reason.NODE_UNDECLARED
    if p.fleet.draining(node):
        return Reason.DRAINED
    if replica.restart_requested:
        return None  # stays: the rollout restarts it now, a failed one included
    if replica.state is ReplicaState.FAILED:
        if _failed_for_a_cooldown(p, spec, replica):
            return Reason.FAILED
        p.draft.failed += 1
        p.draft.notes.append(
            f"replica {spec.name}/{replica.node}/{replica.replica} failed after {replica.restarts} restarts"
            + (f": {replica.last_error}" if replica.last_error else "")
        )
    return None


def _failed_for_a_cooldown(p: Pass, spec: InstanceSpec, replica: ObservedReplica) -> bool:
    """Failed for at least the instance's ``restart_max_delay``: long enough that waiting does not help. A
    replica whose failure time is unknown (a registry from before ``state_since``) counts as failed now."""
    now = p.inputs.now_ms
    since = ms_from_iso(replica.state_since) if replica.state_since is not None else now
    return now - since >= spec.restart.restart_max_delay_ms
