"""Before anything runs: is this plan executable against this desired state?

A plan names instances, backends and launch config hashes; the executor takes the specs themselves from the
desired state. If the two do not belong together (a plan saved from another manifest, a hand-built plan that
names an unknown instance, a ``depends_on`` cycle), applying would fail half-way and leave a half-changed fleet,
so ``check_executable`` raises ``PlanMismatch`` listing every problem, before a single registry write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fleetd.core.desired import DesiredState
from fleetd.executing.steps import launch_details
from fleetd.planning.launch_config import config_hash
from fleetd.planning.plans import REPLICA_KINDS, Action, ActionKind, LabelDetails, Plan

_LAUNCHES = (ActionKind.LOAD, ActionKind.RESTART)


class PlanMismatch(ValueError):
    """The plan cannot be executed against the given desired state; nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "the plan does not match the desired state; plan again (nothing was changed):\n  - "
            + "\n  - ".join(problems)
        )


def check_executable(plan: Plan, desired: DesiredState) -> None:
    """Raise ``PlanMismatch`` unless every action of ``plan`` can run against ``desired``."""
    problems: list[str] = []
    if plan.desired_digest and plan.desired_digest != desired.digest:
        problems.append(
            f"the plan was made from a manifest with digest {plan.desired_digest}, not this one ({desired.digest})"
        )
    problems.extend(_graph_problems(plan))
    for action in plan.actions:
        problems.extend(_action_problems(action, desired))
    if problems:
        raise PlanMismatch(problems)


def _graph_problems(plan: Plan) -> Iterator[str]:
    counts = Counter(a.id for a in plan.actions)
    known = set(counts)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        yield f"duplicate action ids: {', '.join(duplicates)}"
    for action in plan.actions:
        for dep in action.depends_on:
            if dep not in known:
                yield f"{action.id} depends on {dep}, which is not in the plan"
    cycle = _cycle_members(plan)
    if cycle:
        yield f"depends_on has a cycle among {', '.join(cycle)}"


def _cycle_members(plan: Plan) -> list[str]:
    """Ids left over by Kahn's algorithm: those on or behind a cycle (empty when the graph is acyclic)."""
    known = {a.id for a in plan.actions}
    waiting = {a.id: len({d for d in a.depends_on if d in known}) for a in plan.actions}
    dependents: dict[str, list[str]] = {}
    for action in plan.actions:
        for dep in set(action.depends_on) & known:
            dependents.setdefault(dep, []).append(action.id)
    ready = [i for i, count in waiting.items() if count == 0]
    while ready:
        done = ready.pop()
        del waiting[done]
        for dependent in dependents.get(done, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return sorted(waiting)


def _action_problems(action: Action, desired: DesiredState) -> Iterator[str]:
    if action.kind in REPLICA_KINDS and (action.instance is None or action.replica is None):
        yield f"{action.id}: names no instance or replica"
        return
    if action.kind in _LAUNCHES:
        yield from _launch_problems(action, desired)
    elif action.kind is ActionKind.INSTALL_BACKEND:
        if action.backend is None or desired.backend(action.backend) is None:
            yield f"{action.id}: backend {action.backend} is not in the desired state"
    elif action.kind is ActionKind.SET_LABELS:
        slots = action.details_as(LabelDetails).max_replicas_per_model
        if slots is not None and slots < 1:
            yield f"{action.id}: max_replicas_per_model must be a positive integer, got {slots!r}"


def _launch_problems(action: Action, desired: DesiredState) -> Iterator[str]:
    assert action.instance is not None
    spec = desired.instance(action.instance)
    if spec is None:
        yield f"{action.id}: instance {action.instance} is not in the desired state"
        return
    backend_name = action.backend or spec.backend
    if backend_name != spec.backend:
        yield f"{action.id}: the plan runs it on backend {backend_name}, the desired state on {spec.backend}"
        return
    backend = desired.backend(backend_name)
    if backend is None:
        yield f"{action.id}: backend {backend_name} is not in the desired state"
        return
    details = launch_details(action)
    if details.config_hash != config_hash(spec, backend):
        yield (
            f"{action.id}: the plan's launch config ({details.config_hash}) is not the desired one "
            f"({config_hash(spec, backend)})"
        )
    if details.vram_bytes < 0:
        yield f"{action.id}: vram_bytes must be a non-negative integer, got {details.vram_bytes!r}"
