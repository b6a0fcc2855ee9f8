"""Lost and failed replicas: forgotten, or replaced, so that neither blocks its instance.

Two steps of the per-instance pipeline:
- ``forget_lost``: a replica on a lost node (offline, or unknown to the registry) gets a ``forget`` (its row is
  removed; no agent is asked). Its replacement is one of the instance's missing replicas (``place``). At most
  ``PlanPolicy.max_replacements`` are forgotten per plan; the others stay as they are (neither counted as
  running nor replaced) until a later cycle, and the plan says how many wait (``Plan.deferred``).
- ``replace_failed``: a replica that crash-looped past ``max_restarts`` and has been failed for at least the
  instance's ``restart_max_delay`` is loaded on another node (``replace``, ``from_node``), then unloaded
  (``failed``, depending on that load). When no other node can take it (without evicting anything), it is
  restarted in place, stopping first (``failed``); when even that does not fit, or the node's agent said the
  model file is missing there, it is reported unschedulable.
  A failed process holds no memory, so the restart needs the replica's whole size free.
"""

from __future__ import annotations

from dataclasses import replace

from fleetd.core.observed import ObservedReplica
from fleetd.planning.classify import Classified
from fleetd.planning.context import Need, Pass
from fleetd.planning.missing_models import missing_in_place
from fleetd.planning.placing import ReplicaIndexes, load_replica
from fleetd.planning.plans import Reason, forget_action, unload_action
from fleetd.planning.rollout import fit_restart, no_room, plan_restart


def forget_lost(p: Pass, need: Need, classified: Classified) -> tuple[Classified, int]:
    """A ``forget`` for each replica on a lost node, within the plan's re-placement budget; its slot there is
    given back (its memory went with it). Returns the classification without the deferred replicas, and how
    many were deferred (the instance places none for them this cycle)."""
    kept: list[tuple[ObservedReplica, Reason]] = []
    deferred = 0
    for replica, why in classified.gone:
        if why is not Reason.NODE_LOST:
            kept.append((replica, why))
            continue
        if p.draft.replacements >= p.inputs.policy.max_replacements:
            deferred += 1
            continue
        p.draft.replacements += 1
        kept.append((replica, why))
        p.draft.actions.append(
            forget_action(need.spec.name, replica.node, replica.replica, vram_bytes=replica.vram_bytes)
        )
        if (lost := p.fleet.capacity(replica.node)) is not None:
            lost.give_back(need.spec.name, 0)
    if deferred:
        p.draft.deferred += deferred
        p.draft.notes.append(
            f"{deferred} replica{'s' if deferred != 1 else ''} of {need.spec.name} on lost nodes wait for the next "
            f"cycle (at most {p.inputs.policy.max_replacements} re-placements per cycle)"
        )
    return replace(classified, gone=tuple(kept)), deferred


def replace_failed(p: Pass, need: Need, failed: tuple[ObservedReplica, ...], indexes: ReplicaIndexes) -> None:
    """For each failed replica: a load elsewhere and its unload after it, else a restart in place, else an
    unschedulable replica."""
    for replica in failed:
        index = indexes.next()
        request = need.request(exclude=frozenset({replica.node}))
        load, _ = load_replica(p, need, request, index, Reason.REPLACE, source=replica.node, evict=False)
        if load is not None:
            indexes.take(index)
            unload = unload_action(
                need.spec.name,
                replica.node,
                replica.replica,
                reason=Reason.FAILED,
                vram_bytes=replica.vram_bytes,
                depends_on=(load.id,),
            )
            p.draft.actions.append(unload)
            p.fleet.known(replica.node).give_back(need.spec.name, 0)  # a failed process holds no memory
            continue
        if missing_in_place(p, need.spec, replica.node):
            continue
        fit = fit_restart(p, need, replica, surge=False, held=0)
        if fit is None:
            p.draft.add_unschedulable(no_room(need.spec.name))
        else:
            plan_restart(p, need, replica, Reason.FAILED, fit)
