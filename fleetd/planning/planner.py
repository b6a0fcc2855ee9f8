"""``plan(desired, observed, now_ms=...) -> Plan``: the pure core of fleetd (architecture.md §5 and §6).

It compares what the manifest declares with what the registry observed and returns the actions that close the
gap, each with a reason: node approvals, labels and drains first (``node_actions``); then, instance by instance
in priority order, the steps of ``instances`` (classify -> stop -> rollout -> place -> replace failed); then the
unloads of instances the manifest removed. It reads no clock, file or network; ``now_ms`` is an argument.

Rules that keep plans safe and calm:
- a plan that would take the fleet from some running replicas to none by the manifest's doing (removals,
  scale-downs) is refused unless ``allow_empty``; idle timeouts and lost nodes (forgotten replicas) are not
  the manifest's doing;
- a config change rolls through an instance's replicas in batches chained by ``depends_on``, surging a new
  process before stopping the old one when ``rollout.max_surge`` and the node's free VRAM allow; a restart that
  would not fit even with the old process stopped is reported unschedulable;
- a replica moved off a draining or undeclared node is loaded elsewhere first, then the old one is unloaded; one
  on a lost node is forgotten and one evicted by a higher priority is unloaded at once, each replaced elsewhere
  (``replace``, ``from_node``); a failed one is replaced once it has been failed for ``restart_max_delay``;
- replicas above ``min_replicas`` that are idle (nothing in flight, unused for ``idle_timeout`` or the policy's
  delay) are unloaded; when every running replica is busy, one more is loaded, up to ``max_replicas``;
- VRAM accounting includes reservations and every placement made earlier in the same plan; a placement that
  needs memory an unload of this plan frees depends on that unload, so no execution order over-commits a node.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState, ReplicaState
from fleetd.core.timestamps import iso_from_ms
from fleetd.planning.capacity import FleetView
from fleetd.planning.context import Draft, Pass, PassInputs, PlanPolicy
from fleetd.planning.eviction import Evictions
from fleetd.planning.hysteresis import capacity_digest
from fleetd.planning.instances import plan_instance
from fleetd.planning.launch_config import launch_hashes
from fleetd.planning.node_actions import plan_nodes
from fleetd.planning.plans import Action, ActionKind, Plan, PlanRefused, Reason, unload_action
from fleetd.planning.scaling import LIVE

__all__ = ["PlanPolicy", "plan"]

DEFAULT_POLICY = PlanPolicy()


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    now_ms: int,
    policy: PlanPolicy = DEFAULT_POLICY,
    vram_estimates: Mapping[str, int] | None = None,
    revision: str | None = None,
) -> Plan:
    """The actions that take ``observed`` to ``desired``. Raises ``PlanRefused`` for an unsafe plan."""
    p = _start(desired, observed, now_ms, policy, vram_estimates or {})
    plan_nodes(p)
    replicas_by_instance = observed.replicas_by_instance
    backends = {b.name: b for b in desired.backends}
    for instance in sorted(desired.instances, key=lambda i: (-i.scheduling.priority, i.name)):
        plan_instance(p, instance, backends[instance.backend], replicas_by_instance.get(instance.name, ()))
    _unload_removed(p)
    _refuse_emptying(p)
    draft = p.draft
    return Plan(
        actions=tuple(sorted(draft.actions, key=_action_order)),
        unschedulable=tuple(sorted(draft.unschedulable.values(), key=lambda u: u.instance)),
        desired_digest=desired.digest,
        observed_fingerprint=observed.fingerprint,
        revision=revision,
        created_at=iso_from_ms(now_ms),
        notes=tuple(draft.notes),
        scheduling=tuple(sorted(draft.kept_records, key=lambda r: r.instance)),
        deferred=draft.deferred,
        failed=draft.failed,
    )


def _start(
    desired: DesiredState, observed: ObservedState, now_ms: int, policy: PlanPolicy, estimates: Mapping[str, int]
) -> Pass:
    declared = {n.name: n for n in desired.nodes}
    priorities = {i.name: i.scheduling.priority for i in desired.instances}
    inputs = PassInputs(
        desired=desired,
        observed=observed,
        now_ms=now_ms,
        policy=policy,
        estimates=estimates,
        hashes=launch_hashes(desired),
        declared=declared,
        records={r.instance: r for r in observed.scheduling},
        capacity_key=capacity_digest(observed),
        priorities=priorities,
    )
    fleet = FleetView(observed, declared, nodes_declared=desired.nodes_declared)
    return Pass(inputs, fleet, Draft(), Evictions(observed, priorities))


def _unload_removed(p: Pass) -> None:
    """Unload every replica of an instance the manifest no longer declares."""
    replicas_by_instance = p.inputs.observed.replicas_by_instance
    for name in sorted(set(replicas_by_instance) - set(p.inputs.priorities)):
        for replica in replicas_by_instance[name]:
            if replica.state is not ReplicaState.STOPPING:
                p.draft.actions.append(
                    unload_action(
                        name, replica.node, replica.replica, reason=Reason.REMOVED, vram_bytes=replica.vram_bytes
                    )
                )


def _refuse_emptying(p: Pass) -> None:
    """Refuse a plan that takes the fleet from some live replicas to none, like Argo CD's refusal to prune to
    zero. Only the manifest's doing counts: a plan whose unloads are all idle timeouts (an on-demand instance
    going to sleep) records what the fleet does by itself, and a replica forgotten on a lost node was not taken
    away by the plan (so a plan that forgets one never empties the fleet by itself)."""
    if p.inputs.policy.allow_empty:
        return
    actions = p.draft.actions
    unloads = {a.id: a for a in actions if a.kind is ActionKind.UNLOAD}
    if not unloads:  # nothing is unloaded: nothing is emptied (and no need to list 50,000 replicas)
        return
    live = [r for r in p.inputs.observed.replicas if r.state in LIVE]
    if not live:
        return
    if any(a.kind is ActionKind.LOAD for a in actions) or len(unloads) < len(live):
        return
    if not all(f"unload:{r.instance}:{r.node}:{r.replica}" in unloads for r in live):
        return
    if all(a.reason is Reason.IDLE for a in unloads.values()):
        return
    raise PlanRefused(
        f"this plan would unload every running replica of the fleet ({len(live)}); if that is what you mean, "
        "plan again with --allow-empty"
    )


_KIND_ORDER = {
    ActionKind.APPROVE_NODE: 0,
    ActionKind.SET_LABELS: 1,
    ActionKind.DRAIN_NODE: 2,
    ActionKind.INSTALL_BACKEND: 3,
    ActionKind.LOAD: 4,
    ActionKind.RESTART: 5,
    ActionKind.UNLOAD: 6,
    ActionKind.FORGET: 7,
}


def _action_order(action: Action) -> tuple[int, str]:
    return (_KIND_ORDER[action.kind], action.id)
