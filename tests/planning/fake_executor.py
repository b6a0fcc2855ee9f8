"""A perfect executor, as a pure function: ``apply_plan(plan, desired, observed) -> ObservedState``.

It does what a flawless executor and agents would do, so that tests can apply a plan and plan again
(architecture.md §8: "after applying a plan with a fake executor, re-planning yields nothing"). It is also strict:
it raises ``ExecutionError`` when a plan asks for something an executor could not do in the order it runs the
actions: a ``depends_on`` id that is not in the plan or a cycle, a load on a node that is not approved and
healthy, lacks the backend or lacks the free VRAM (available minus reserved; RAM on a node without a GPU) at
that moment, a second replica under one id, an unload, forget or restart of a replica that does not exist.

Actions run one at a time in an order that respects ``depends_on``. Among the actions whose dependencies are
done, ``order="eager"`` picks the one that comes first in the plan (loads and surges before the unloads that
free room: the worst case for capacity, so a load that needs room freed by an unload must depend on it), and
``order="lazy"`` the one that comes last (prerequisites such as approvals and installs as late as possible:
the worst case for prerequisites, so a load that needs one must depend on it). A correct plan gives the same
state in both orders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Literal

from fleetd.core.desired import DesiredState
from fleetd.core.names import AUTO_LABEL_KEYS
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from fleetd.planning.plans import (
    Action,
    ActionKind,
    LabelDetails,
    LoadDetails,
    Plan,
    RestartDetails,
    RestartStrategy,
)

Order = Literal["eager", "lazy"]
ReplicaKey = tuple[str, str, int]


class ExecutionError(AssertionError):
    """The plan asked for something a correct executor could not do."""


def has_gpu(node: ObservedNode) -> bool:
    """A node offers VRAM when it reports a GPU vendor and some VRAM; otherwise its RAM (CPU-only llama.cpp)."""
    return node.gpu_vendor != "none" and node.total_vram > 0


def free_memory(node: ObservedNode) -> int:
    """What a new replica may use on ``node``: reported free VRAM (or RAM) minus reservations, at least 0 (as
    ``ObservedNode.free_vram``)."""
    return max(0, (node.available_vram if has_gpu(node) else node.available_ram) - node.reserved_vram)


def execution_order(plan: Plan, order: Order = "eager") -> list[Action]:
    """The actions in a sequence that respects ``depends_on``; raises on unknown ids, self-loops and cycles."""
    position = {}
    for index, action in enumerate(plan.actions):
        if action.id in position:
            raise ExecutionError(f"two actions with id {action.id}")
        position[action.id] = index
    for action in plan.actions:
        for dep in action.depends_on:
            if dep not in position:
                raise ExecutionError(f"{action.id} depends on {dep}, which is not in the plan")
            if dep == action.id:
                raise ExecutionError(f"{action.id} depends on itself")
    done: set[str] = set()
    sequence: list[Action] = []
    pending = list(plan.actions)
    while pending:
        ready = [a for a in pending if all(d in done for d in a.depends_on)]
        if not ready:
            raise ExecutionError(f"depends_on has a cycle among {sorted(a.id for a in pending)}")
        chosen = ready[0] if order == "eager" else ready[-1]
        pending.remove(chosen)
        done.add(chosen.id)
        sequence.append(chosen)
    return sequence


def dependencies(plan: Plan, action_id: str) -> set[str]:
    """Every id ``action_id`` waits for, directly or through other actions."""
    by_id = {a.id: a for a in plan.actions}
    seen: set[str] = set()
    stack = list(by_id[action_id].depends_on)
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(by_id[current].depends_on)
    return seen


class _World:
    """The mutable fleet the actions run against."""

    def __init__(self, observed: ObservedState) -> None:
        self.nodes = {n.name: n for n in observed.nodes}
        self.replicas: dict[ReplicaKey, ObservedReplica] = {
            (r.instance, r.node, r.replica): r for r in observed.replicas
        }
        self.free = {n.name: free_memory(n) for n in observed.nodes}
        """What each node can still give: free at plan time, plus what unloads returned, minus what loads took."""

    def node(self, action: Action) -> ObservedNode:
        node = self.nodes.get(action.node)
        if node is None:
            raise ExecutionError(f"{action.id}: node {action.node} is not registered")
        return node

    def replica(self, action: Action) -> ObservedReplica:
        assert action.instance is not None and action.replica is not None
        replica = self.replicas.get((action.instance, action.node, action.replica))
        if replica is None:
            raise ExecutionError(f"{action.id}: no such replica")
        return replica

    def adjust_memory(self, name: str, delta: int) -> None:
        """Add ``delta`` bytes to what node ``name`` reports free (VRAM, or RAM without a GPU)."""
        node = self.nodes.get(name)
        if node is None:
            return
        self.free[name] += delta
        if has_gpu(node):
            self.nodes[name] = dataclasses.replace(node, available_vram=node.available_vram + delta)
        else:
            self.nodes[name] = dataclasses.replace(node, available_ram=node.available_ram + delta)

    def require_room(self, action: Action, size: int) -> None:
        node = self.node(action)
        if self.free[node.name] < size:
            raise ExecutionError(
                f"{action.id}: over-commit, needs {size} bytes but node {node.name} has {self.free[node.name]} free"
            )


def _approve(world: _World, action: Action) -> None:
    node = world.node(action)
    status = NodeStatus.HEALTHY if node.status is NodeStatus.PENDING else node.status
    world.nodes[node.name] = dataclasses.replace(node, approved=True, status=status)


def _set_labels(world: _World, action: Action) -> None:
    node = world.node(action)
    details = action.details_as(LabelDetails)
    auto = [(k, v) for k, v in node.labels if k in AUTO_LABEL_KEYS]
    labels = tuple(sorted([*auto, *details.labels]))
    slots = node.max_replicas_per_model
    if details.max_replicas_per_model is not None:
        slots = details.max_replicas_per_model
    world.nodes[node.name] = dataclasses.replace(node, labels=labels, max_replicas_per_model=slots)


def _drain(world: _World, action: Action) -> None:
    node = world.node(action)
    world.nodes[node.name] = dataclasses.replace(node, status=NodeStatus.DRAINING)


def _install(world: _World, action: Action) -> None:
    node = world.node(action)
    assert action.backend is not None
    if action.backend in node.backends:
        raise ExecutionError(f"{action.id}: backend {action.backend} is already installed")
    world.nodes[node.name] = dataclasses.replace(node, backends=tuple(sorted([*node.backends, action.backend])))


def _load(world: _World, action: Action) -> None:
    node = world.node(action)
    assert action.instance is not None and action.replica is not None and action.backend is not None
    if not node.approved or node.status is not NodeStatus.HEALTHY:
        raise ExecutionError(f"{action.id}: node {node.name} is {node.status.value}, approved={node.approved}")
    if action.backend not in node.backends:
        raise ExecutionError(f"{action.id}: backend {action.backend} is not installed on {node.name}")
    key = (action.instance, action.node, action.replica)
    if key in world.replicas:
        raise ExecutionError(f"{action.id}: the replica already exists")
    details = action.details_as(LoadDetails)
    size = details.vram_bytes
    world.require_room(action, size)
    world.adjust_memory(node.name, -size)
    world.replicas[key] = ObservedReplica(
        action.instance,
        action.node,
        action.replica,
        ReplicaState.RUNNING,
        address=f"{action.node}:{8080 + action.replica}",
        config_hash=details.config_hash,
        vram_bytes=size,
    )


def _restart(world: _World, action: Action) -> None:
    replica = world.replica(action)
    details = action.details_as(RestartDetails)
    size = details.vram_bytes
    if details.strategy is RestartStrategy.SURGE:  # the new one starts beside the old, which stops once healthy
        world.require_room(action, size)
        world.adjust_memory(action.node, replica.vram_bytes - size)
    else:
        world.adjust_memory(action.node, replica.vram_bytes)
        world.require_room(action, size)
        world.adjust_memory(action.node, -size)
    world.replicas[(replica.instance, replica.node, replica.replica)] = dataclasses.replace(
        replica,
        state=ReplicaState.RUNNING,
        config_hash=details.config_hash,
        vram_bytes=size,
        in_flight=0,
        restarts=0,
        last_error=None,
    )


def _unload(world: _World, action: Action) -> None:
    replica = world.replica(action)
    del world.replicas[(replica.instance, replica.node, replica.replica)]
    world.adjust_memory(replica.node, replica.vram_bytes)


def _forget(world: _World, action: Action) -> None:
    """The row goes; the lost node's readings stay as they were (no agent reports anything)."""
    replica = world.replica(action)
    del world.replicas[(replica.instance, replica.node, replica.replica)]


_STEPS: dict[ActionKind, Callable[[_World, Action], None]] = {
    ActionKind.APPROVE_NODE: _approve,
    ActionKind.SET_LABELS: _set_labels,
    ActionKind.DRAIN_NODE: _drain,
    ActionKind.INSTALL_BACKEND: _install,
    ActionKind.LOAD: _load,
    ActionKind.RESTART: _restart,
    ActionKind.UNLOAD: _unload,
    ActionKind.FORGET: _forget,
}


def apply_plan(
    plan: Plan, desired: DesiredState, observed: ObservedState, *, order: Order = "eager"
) -> ObservedState:
    """The observed state after a perfect executor ran ``plan``; the plan's hysteresis records are persisted.

    ``desired`` is what the plan was made from; a perfect executor needs nothing from it beyond what the
    actions carry, so it is only checked for consistency (every instance an action loads is declared).
    """
    declared = {i.name for i in desired.instances}
    world = _World(observed)
    for action in execution_order(plan, order):
        if action.kind in (ActionKind.LOAD, ActionKind.RESTART) and action.instance not in declared:
            raise ExecutionError(f"{action.id}: instance {action.instance} is not in the manifest")
        _STEPS[action.kind](world, action)
    return ObservedState(
        nodes=tuple(world.nodes[name] for name in sorted(world.nodes)),
        replicas=tuple(world.replicas[key] for key in sorted(world.replicas)),
        scheduling=plan.scheduling,
    )


def replicas_on(
    observed: ObservedState, node: str, instances: Iterable[str] | None = None
) -> list[ObservedReplica]:
    """The replicas on ``node`` (of ``instances`` when given)."""
    wanted = None if instances is None else set(instances)
    return [r for r in observed.replicas if r.node == node and (wanted is None or r.instance in wanted)]
