"""The serve log's line per applied action: what it acted on (instance/replica on node, backend on node, node),
why, and how it ended; a cycle that did many says how many more instead of flooding the log."""

from __future__ import annotations

from fleetd.controlling.reconciling import MAX_ACTION_LINES, CycleResult, action_lines
from fleetd.core.observed import ObservedState
from fleetd.executing.report import ActionOutcome, ApplyReport
from fleetd.planning.plans import Plan, Reason, approve_action, unload_action


def test_each_applied_action_names_its_replica_reason_and_ending() -> None:
    unload = unload_action("tiny", "local", 1, reason=Reason.SCALE_DOWN, vram_bytes=0)
    approve = approve_action("gpu-b")
    plan = Plan(actions=(approve, unload))
    report = ApplyReport(
        "h",
        (
            ActionOutcome(approve.id, "approve_node", "gpu-b", "ok", "approved", 12),
            ActionOutcome(unload.id, "unload", "local", "failed", "node local: not connected", 1_500),
        ),
    )
    lines = action_lines(CycleResult(0, 1.0, ObservedState(), plan=plan, report=report))
    assert lines == [
        "approve_node gpu-b: pre_approved -> ok in 0.01 s",
        "unload tiny/1 on local: scale_down -> failed in 1.50 s: node local: not connected",
    ]


def test_a_large_cycle_is_summarised_after_the_first_lines() -> None:
    unloads = [unload_action("chat", "gpu-a", i, reason=Reason.REMOVED, vram_bytes=0) for i in range(25)]
    report = ApplyReport("h", tuple(ActionOutcome(a.id, "unload", "gpu-a", "ok", "", 5) for a in unloads))
    lines = action_lines(CycleResult(0, 1.0, ObservedState(), plan=Plan(actions=tuple(unloads)), report=report))
    assert len(lines) == MAX_ACTION_LINES + 1
    assert lines[-1] == "... and 5 more (GET /status lists every outcome)"
    assert action_lines(CycleResult(0, 1.0, ObservedState())) == []
