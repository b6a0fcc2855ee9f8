"""Executing a plan: ``apply_plan(plan, desired, registry, agents) -> ApplyReport`` (architecture.md §1 and §5).

The layer between the pure planner and the nodes: it runs each action through one idempotent step, in an
order that respects ``depends_on``, writing durable intent and VRAM reservations to the registry and talking to
nodes only through ``AgentClient``.
"""

from fleetd.executing.executor import apply_plan
from fleetd.executing.fencing import Fence
from fleetd.executing.report import ActionOutcome, ApplyReport, OutcomeStatus
from fleetd.executing.validation import PlanMismatch, check_executable
from fleetd.executing.writes import save_scheduling

__all__ = [
    "ActionOutcome",
    "ApplyReport",
    "Fence",
    "OutcomeStatus",
    "PlanMismatch",
    "apply_plan",
    "check_executable",
    "save_scheduling",
]
