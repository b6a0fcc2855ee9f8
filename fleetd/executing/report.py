"""What an apply did, action by action: the value ``apply_plan`` returns and ``fleetd apply`` turns into output.

Kept apart from the executor so the CLI and the daemon can read a report (and its exit code, architecture.md
§5: 0 converged and healthy, 1 error, 3 applied but unhealthy or unschedulable) without the machinery
that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fleetd.planning.plans import ActionKind, Plan

OutcomeStatus = Literal["ok", "failed", "skipped"]

EXIT_CONVERGED = 0
EXIT_ERROR = 1
EXIT_DEGRADED = 3

_LAUNCHES = (ActionKind.LOAD.value, ActionKind.RESTART.value)


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """How one action ended. ``replica_state`` is what the agent reported for a load or restart."""

    action_id: str
    kind: str
    node: str
    status: OutcomeStatus
    message: str
    duration_ms: int
    replica_state: str | None = None

    def log_entry(self) -> dict[str, Any]:
        """The action as the apply log stores it: ``outcome`` is ``ok`` or ``failed: ...`` / ``skipped: ...``."""
        outcome = "ok" if self.status == "ok" else f"{self.status}: {self.message}"
        entry: dict[str, Any] = {
            "id": self.action_id,
            "kind": self.kind,
            "node": self.node,
            "outcome": outcome,
            "duration_ms": self.duration_ms,
        }
        if self.replica_state is not None:
            entry["replica_state"] = self.replica_state
        return entry


@dataclass(frozen=True, slots=True)
class ApplyReport:
    plan_hash: str
    outcomes: tuple[ActionOutcome, ...]
    """One per action, in the plan's action order."""

    def ok(self) -> bool:
        """Every action ran and succeeded (a replica that started unhealthy still counts as run)."""
        return all(o.status == "ok" for o in self.outcomes)

    def failed(self) -> tuple[ActionOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    def skipped(self) -> tuple[ActionOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "skipped")

    def unhealthy(self) -> tuple[ActionOutcome, ...]:
        """Loads and restarts that ran but whose replica is not running."""
        return tuple(
            o for o in self.outcomes if o.kind in _LAUNCHES and o.status == "ok" and o.replica_state != "running"
        )

    def outcome(self, action_id: str) -> ActionOutcome | None:
        return next((o for o in self.outcomes if o.action_id == action_id), None)

    def exit_code(self, plan: Plan) -> int:
        """``fleetd apply``'s exit code: 1 when an action failed or did not run, 3 when everything ran but a
        replica is not running or the plan left replicas unschedulable, 0 otherwise."""
        if plan.hash != self.plan_hash:
            raise ValueError(f"this report is of plan {self.plan_hash}, not of plan {plan.hash}")
        if self.failed() or self.skipped():
            return EXIT_ERROR
        if self.unhealthy() or plan.unschedulable:
            return EXIT_DEGRADED
        return EXIT_CONVERGED
