"""Stop: how many replicas an instance should have, and which to unload when it has more.

The second step of the per-instance pipeline, run before anything is placed because it frees room. The target
is the instance's live replicas within ``[min, max]``: one more when every running replica is busy, fewer by
those above the floor that have been idle long enough. Above the target, replicas are unloaded in order of
preference: those being moved off their node (no need to move them), then unhealthy or failed ones, then the
least recently used, then the highest index.
"""

from __future__ import annotations

from dataclasses import replace

from fleetd.core.desired import InstanceSpec
from fleetd.core.observed import ObservedReplica, ReplicaState
from fleetd.core.timestamps import ms_from_iso
from fleetd.planning.classify import Classified
from fleetd.planning.context import Need, Pass
from fleetd.planning.plans import Reason, unload_action

LIVE = (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.UNHEALTHY)


def target_count(p: Pass, spec: InstanceSpec, staying: tuple[ObservedReplica, ...], *, all_running: bool) -> int:
    """How many replicas the instance should have: its live replicas within ``[min, max]``, one more when every
    running replica is busy, fewer by the replicas above ``min`` that have been idle long enough.

    Only the instance's own ``idle_timeout`` takes an on-demand instance (``min_replicas: 0``) back to zero;
    with ``idle_timeout: 0`` ("never") the policy's scale-down delay trims load-driven replicas, never the last.
    """
    s = spec.scheduling
    live = staying if all_running else [r for r in staying if r.state in LIVE]
    threshold = p.inputs.policy.scale_up_in_flight
    # every live replica running, and every one of them busy: one more (an empty list is not busy; the first
    # replica decides most instances without a generator)
    if (
        live
        and live[0].in_flight >= threshold
        and all(r.state is ReplicaState.RUNNING and r.in_flight >= threshold for r in live)
    ):
        return min(s.max_replicas, max(len(live) + 1, s.min_replicas))
    floor = s.min_replicas if spec.idle_timeout_ms else max(s.min_replicas, min(1, len(live)))
    if len(live) <= floor:  # nothing above the floor to trim (and no timestamps to read)
        return min(floor, s.max_replicas)
    idle = sum(1 for r in live if _is_idle(p, spec, r))
    return min(max(len(live) - idle, floor), s.max_replicas)


def scale_down(p: Pass, need: Need, classified: Classified, target: int) -> Classified:
    """Unload the replicas above ``target``; the classification without them."""
    extra = len(classified.staying) + len(classified.moving) + len(classified.failed) - target
    if extra <= 0:
        return classified
    spec = need.spec
    removed: set[tuple[str, int]] = set()
    for replica, reason in _pick_for_removal(p, spec, classified, extra):
        unload = unload_action(
            spec.name, replica.node, replica.replica, reason=reason, vram_bytes=replica.vram_bytes
        )
        p.draft.actions.append(unload)
        p.fleet.known(replica.node).give_back(spec.name, replica.vram_bytes, by=unload.id)
        removed.add((replica.node, replica.replica))
    return replace(
        classified,
        staying=tuple(r for r in classified.staying if (r.node, r.replica) not in removed),
        moving=tuple((r, why) for r, why in classified.moving if (r.node, r.replica) not in removed),
        failed=tuple(r for r in classified.failed if (r.node, r.replica) not in removed),
    )


def _pick_for_removal(
    p: Pass, spec: InstanceSpec, classified: Classified, count: int
) -> list[tuple[ObservedReplica, Reason]]:
    """Replicas to unload when there are more than the target: those being moved first (keeping their
    reason), then those replaced while their node was lost (back with it: reason ``node_lost``), then unhealthy
    or failed, then least recently used (one with requests in flight is in use now), then highest index."""
    chosen = list(classified.moving[:count])

    def preference(r: ObservedReplica) -> tuple[int, int, int, int]:
        healthy = 0 if r.state in (ReplicaState.UNHEALTHY, ReplicaState.FAILED) else 1
        used = p.inputs.now_ms if r.in_flight > 0 else (_idle_since_ms(r) or 0)
        return (0 if r.replaced else 1, healthy, used, -r.replica)

    kept = classified.staying
    if classified.failed:  # in replica order, as if they had stayed
        kept = tuple(sorted((*kept, *classified.failed), key=lambda r: (r.node, r.replica)))
    for replica in sorted(kept, key=preference)[: count - len(chosen)]:
        chosen.append((replica, _scale_down_reason(p, spec, replica)))
    return chosen


def _scale_down_reason(p: Pass, spec: InstanceSpec, replica: ObservedReplica) -> Reason:
    """``node_lost`` for a replica replaced while its node was lost, ``idle`` when the instance's own
    ``idle_timeout`` ran out on this replica, ``scale_down`` otherwise."""
    if replica.replaced:
        return Reason.NODE_LOST
    if spec.idle_timeout_ms and _is_idle(p, spec, replica):
        return Reason.IDLE
    return Reason.SCALE_DOWN


def _is_idle(p: Pass, spec: InstanceSpec, replica: ObservedReplica) -> bool:
    """Running, nothing in flight, and last used longer ago than the instance's ``idle_timeout`` (or, when it
    sets none, the policy's scale-down delay). A replica that never served a request is not idle: its age is
    unknown, and unloading it would undo a scale-up before it had a chance to take load."""
    if replica.state is not ReplicaState.RUNNING or replica.in_flight or replica.last_used is None:
        return False
    idle_for = spec.idle_timeout_ms or p.inputs.policy.scale_down_idle_ms
    return p.inputs.now_ms - ms_from_iso(replica.last_used) >= idle_for


def _idle_since_ms(replica: ObservedReplica) -> int | None:
    return ms_from_iso(replica.last_used) if replica.last_used is not None else None
