"""Rollout: restart the replicas whose launch config changed or that are unhealthy, in batches.

A step of the per-instance pipeline, run on the replicas that stay. Batches are ``max(1, max_surge,
max_unavailable)`` restarts, each batch waiting for the one before (``depends_on``). A restart surges (a new
process beside the old one until it is healthy) when ``rollout.max_surge`` allows and the node has room for
both, and stops the old process first otherwise; the room it takes is reserved on the node, so placements later
in the plan cannot take it. A restart that does not fit even with the old process stopped is not planned: the
replica is reported unschedulable (``insufficient_vram``), so ``fleetd apply`` exits 3 until there is room; so is
one whose node's agent said the model file is missing there (``model_missing``): its old process keeps running.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetd.core.observed import ObservedReplica, ReplicaState
from fleetd.planning.context import Need, Pass
from fleetd.planning.missing_models import missing_in_place
from fleetd.planning.plans import Reason, RestartDetails, RestartStrategy, Unschedulable, restart_action


@dataclass(frozen=True, slots=True)
class RestartFit:
    strategy: RestartStrategy
    waits: tuple[str, ...]
    """The unloads of this plan whose memory the restart uses."""


def rollout(p: Pass, need: Need, staying: tuple[ObservedReplica, ...]) -> None:
    """Restart stale or unhealthy replicas in batches; each batch waits for the one before (``depends_on``)."""
    spec, want = need.spec, need.config_hash
    stale = [
        r for r in staying if r.config_hash != want or r.state is ReplicaState.UNHEALTHY or r.restart_requested
    ]
    if not stale:
        return
    batch = max(1, spec.rollout.max_surge, spec.rollout.max_unavailable)
    previous: tuple[str, ...] = ()
    current: list[str] = []
    for replica in stale:
        if missing_in_place(p, spec, replica.node):
            continue
        fit = fit_restart(p, need, replica, surge=spec.rollout.max_surge > 0, held=replica.vram_bytes)
        if fit is None:
            p.draft.add_unschedulable(no_room(spec.name))
            continue
        if len(current) == batch:
            previous, current = tuple(current), []
        reason = Reason.CONFIG_CHANGED if replica.config_hash != want else Reason.UNHEALTHY
        if replica.config_hash == want and replica.restart_requested:
            reason = Reason.REQUESTED
        current.append(plan_restart(p, need, replica, reason, fit, after=previous))


def fit_restart(p: Pass, need: Need, replica: ObservedReplica, *, surge: bool, held: int) -> RestartFit | None:
    """Reserve the room a restart of ``replica`` takes on its node, which frees ``held`` bytes when the old
    process stops; the strategy and what it waits for, or ``None`` when it does not fit."""
    node = p.fleet.known(replica.node)
    size = need.size
    if surge and node.free >= size:
        waits = node.waits_for(size)
        node.reserve(size)  # the new process runs beside the old until it is healthy
        return RestartFit(RestartStrategy.SURGE, waits)
    if node.free + held >= size:
        # Stopping first frees the old process's memory; only growth takes more. Memory it frees is not
        # offered to other placements: they may run before this restart.
        growth = max(0, size - held)
        waits = node.waits_for(growth) if growth else ()
        node.reserve(growth)
        return RestartFit(RestartStrategy.STOP_FIRST, waits)
    return None


def plan_restart(
    p: Pass, need: Need, replica: ObservedReplica, reason: Reason, fit: RestartFit, *, after: tuple[str, ...] = ()
) -> str:
    """Append the restart; it waits for ``after`` and for the unloads whose memory it uses. Returns its id."""
    details = RestartDetails(need.config_hash, replica.config_hash, fit.strategy, need.size)
    action = restart_action(
        need.spec.name,
        replica.node,
        replica.replica,
        backend=need.backend.name,
        reason=reason,
        details=details,
        depends_on=tuple(sorted({*after, *fit.waits})),
    )
    p.draft.actions.append(action)
    return action.id


def no_room(instance: str) -> Unschedulable:
    """One replica that cannot be restarted where it is for want of memory."""
    return Unschedulable(instance, 1, (("insufficient_vram", 1),))
