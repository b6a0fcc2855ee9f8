"""One instance's part of the plan, in the shape of Nomad's reconciler: classify -> stop -> rollout -> place.

Instances are planned one after the other, highest priority first, each through the same steps:
1. classify its replicas: staying, moving (drained or undeclared node), gone (lost node, evicted), failed;
2. forget the replicas on lost nodes (within the plan's re-placement budget; the rest wait a cycle);
3. stop: the target count, and the unloads above it (scale down, idle), which free room for what follows;
4. rollout: restart stale or unhealthy replicas in batches (skipped when every staying replica is fresh);
5. place the missing replicas, moved and gone ones first, with placement hysteresis;
6. replace the failed replicas (elsewhere, else in place).
A converged instance costs the classification's fast path and a target count, and stops there.
"""

from __future__ import annotations

from fleetd.core.desired import BackendSpec, InstanceSpec
from fleetd.core.observed import ObservedReplica
from fleetd.planning.classify import classify
from fleetd.planning.context import Need, Pass
from fleetd.planning.placing import ReplicaIndexes, place_missing
from fleetd.planning.replacing import forget_lost, replace_failed
from fleetd.planning.rollout import rollout
from fleetd.planning.scaling import scale_down, target_count


def plan_instance(
    p: Pass, spec: InstanceSpec, backend: BackendSpec, observed: tuple[ObservedReplica, ...]
) -> None:
    """Append to the draft what ``spec`` needs, given its observed replicas (sorted by node and index)."""
    want = p.inputs.hashes[spec.name]
    classified = classify(p, spec, want, observed)
    staying = classified.staying
    target = target_count(p, spec, staying, all_running=classified.settled)
    if (
        classified.settled
        and len(staying) == target
        and not (classified.moving or classified.gone or classified.failed)
    ):
        return  # converged: nothing to stop, restart or place
    size = spec.vram_bytes if spec.vram_bytes is not None else p.inputs.estimates.get(spec.name, 0)
    need = Need(spec, backend, want, size)
    deferred = 0
    if classified.gone:
        classified, deferred = forget_lost(p, need, classified)
    if len(staying) + len(classified.moving) + len(classified.failed) > target:
        classified = scale_down(p, need, classified, target)
    if not classified.settled:
        rollout(p, need, classified.staying)
    missing = target - len(classified.staying) - len(classified.failed) - deferred
    if missing > 0 or classified.failed:
        indexes = ReplicaIndexes(observed)
        place_missing(p, need, classified, missing, indexes)
        if classified.failed:
            replace_failed(p, need, classified.failed, indexes)
