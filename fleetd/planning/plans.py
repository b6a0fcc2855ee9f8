"""The plan: a frozen value that says what apply will do and why (DESIGN.md section 5).

Like Terraform's ``internal/plans``: every action has a stable id (``load:qwen-7b:gpu-a:0``), a reason for
people (the executor never branches on it), the ids it depends on, and details (VRAM, config hash, labels).
Replicas that could not be placed are listed with per-reason node counts. The plan hash covers the canonical
action list, so two plans that would do the same thing hash the same.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from fleetd.core.canonical import digest
from fleetd.core.observed import SchedulingRecord

DetailValue = str | int | bool | None | tuple[tuple[str, str], ...]
"""Detail values: scalars, or label pairs for ``set_labels``."""


class ActionKind(enum.StrEnum):
    APPROVE_NODE = "approve_node"
    SET_LABELS = "set_labels"
    DRAIN_NODE = "drain_node"
    INSTALL_BACKEND = "install_backend"
    LOAD = "load"
    UNLOAD = "unload"
    RESTART = "restart"


SUMMARY_ORDER = (
    ActionKind.LOAD,
    ActionKind.UNLOAD,
    ActionKind.RESTART,
    ActionKind.INSTALL_BACKEND,
    ActionKind.SET_LABELS,
    ActionKind.APPROVE_NODE,
    ActionKind.DRAIN_NODE,
)


class Reason(enum.StrEnum):
    """Why an action is in the plan; for people and for the rendering, never for the executor."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    REMOVED = "removed"
    CONFIG_CHANGED = "config_changed"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"
    NODE_LOST = "node_lost"
    IDLE = "idle"
    EVICTED = "evicted"
    DRAINED = "drained"
    REPLACE = "replace"
    """A load that takes over from a replica being moved away (drain, node lost, unhealthy)."""
    PRE_APPROVED = "pre_approved"
    LABELS_CHANGED = "labels_changed"
    DRAIN_REQUESTED = "drain_requested"
    BACKEND_MISSING = "backend_missing"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: Reason
    node: str
    instance: str | None = None
    replica: int | None = None
    backend: str | None = None
    depends_on: tuple[str, ...] = ()
    details: tuple[tuple[str, DetailValue], ...] = ()
    """Sorted (key, value) pairs: ``vram_bytes``, ``config_hash``, ``labels``, ``from_node``, ..."""

    @property
    def id(self) -> str:
        if self.kind in (ActionKind.LOAD, ActionKind.UNLOAD, ActionKind.RESTART):
            return f"{self.kind.value}:{self.instance}:{self.node}:{self.replica}"
        if self.kind is ActionKind.INSTALL_BACKEND:
            return f"{self.kind.value}:{self.node}:{self.backend}"
        return f"{self.kind.value}:{self.node}"

    def detail(self, key: str) -> DetailValue:
        return dict(self.details).get(key)


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """Replicas of an instance that no node could take, and how many nodes each reason ruled out."""

    instance: str
    missing: int
    reasons: tuple[tuple[str, int], ...]
    """(reason, node count) sorted by reason, e.g. (("insufficient_vram", 3), ("selector", 1))."""


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    unschedulable: tuple[Unschedulable, ...] = ()
    desired_digest: str = ""
    observed_fingerprint: str = ""
    revision: str | None = None
    created_at: str = ""
    notes: tuple[str, ...] = field(default=())
    """Observed drift worth a person's attention that needs no action (kept apart from the actions)."""
    scheduling: tuple[SchedulingRecord, ...] = ()
    """Hysteresis records to persist after this cycle (not part of the plan hash: they execute nothing)."""

    @property
    def hash(self) -> str:
        """Digest of the canonical action list (order-independent: actions are kept sorted by id)."""
        return digest(tuple(sorted(self.actions, key=lambda a: a.id)))

    @property
    def is_empty(self) -> bool:
        return not self.actions

    def summary(self) -> dict[str, int]:
        counts = Counter(a.kind for a in self.actions)
        return {kind.value: counts.get(kind, 0) for kind in SUMMARY_ORDER}

    def action(self, action_id: str) -> Action | None:
        return next((a for a in self.actions if a.id == action_id), None)


class PlanRefused(Exception):
    """The planner will not produce this plan without an explicit override (e.g. removing every replica)."""
