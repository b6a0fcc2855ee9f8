"""``only_targets``: a plan narrowed to some instances (``fleetd apply --target``), with every action they
depend on (a backend install, a node's approval or labels, an eviction), so the narrowed plan still runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from fleetd.planning.plans import Plan


def only_targets(plan: Plan, targets: Sequence[str]) -> Plan:
    """The actions of the ``targets`` instances and, transitively, every action they depend on; unschedulable
    entries of other instances are dropped."""
    wanted = set(targets)
    by_id = {a.id: a for a in plan.actions}
    keep: set[str] = set()
    stack = [a.id for a in plan.actions if a.instance in wanted]
    while stack:
        action_id = stack.pop()
        if action_id in keep:
            continue
        keep.add(action_id)
        stack.extend(dep for dep in by_id[action_id].depends_on if dep in by_id)
    return replace(
        plan,
        actions=tuple(a for a in plan.actions if a.id in keep),
        unschedulable=tuple(u for u in plan.unschedulable if u.instance in wanted),
    )
