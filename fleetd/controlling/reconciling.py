"""``Reconciler.cycle()``: one reconcile cycle of ``fleetd serve`` (architecture.md §1): read the manifest,
observe, plan, save, apply, observe again, through ``plan_once`` and ``apply_once``.

A cycle runs to completion and is level-triggered: it reads the manifest and the fleet as they are now and
never asks what event caused it, so a timer tick, a file change and a SIGHUP are all the same call. The
reconciler keeps what must outlive one cycle: the manifest tracker (the last good desired state: an invalid
edit must not unload the fleet) and the last executor report for ``/status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetd.controlling.cycles import apply_once, plan_once
from fleetd.controlling.fleets import Fleet
from fleetd.controlling.sources import ManifestSource, ManifestTracker, PathSource
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState
from fleetd.executing import ApplyReport, Fence
from fleetd.executing.executor import EventSink
from fleetd.executing.report import ActionOutcome
from fleetd.manifest.revision import Revision
from fleetd.planning.planner import PlanPolicy
from fleetd.planning.plans import Action, Plan, PlanRefused
from fleetd.transport.agent_api import ProgressSink

MAX_ERROR_MESSAGES = 5
"""How many of an invalid manifest's error messages a cycle keeps (the count is always complete)."""


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds spent in each phase of a cycle (bench/converge.py reports them)."""

    load_s: float = 0.0
    observe_s: float = 0.0
    plan_s: float = 0.0
    apply_s: float = 0.0
    reobserve_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one cycle found and did."""

    started_ms: int
    duration_s: float
    observed: ObservedState
    manifest_errors: int = 0
    error_messages: tuple[str, ...] = ()
    desired_digest: str | None = None
    """The digest of the desired state the cycle reconciled to (the last good one), ``None`` when none yet."""
    revision: Revision | None = None
    plan: Plan | None = None
    refused: str | None = None
    report: ApplyReport | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def acted(self) -> bool:
        return self.report is not None and bool(self.report.outcomes)

    @property
    def outcome(self) -> str:
        """``idle`` (nothing to do), ``refused``, ``no-manifest``, or the apply's ``ok``/``failed``/``degraded``."""
        if self.refused is not None:
            return "refused"
        if self.desired_digest is None:
            return "no-manifest"
        if self.plan is None or self.report is None:
            return "idle"
        return {0: "ok", 1: "failed"}.get(self.report.exit_code(self.plan), "degraded")


class Reconciler:
    """Runs cycles for one manifest source; used from one thread at a time (the serve worker)."""

    def __init__(
        self,
        source: ManifestSource | Sequence[Path],
        *,
        policy: PlanPolicy | None = None,
        who: str = "fleetd serve",
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_progress: ProgressSink | None = None,
        on_apply: Callable[[Plan, DesiredState], None] | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        """``on_progress`` hears backend installs while a cycle runs them (a pip build can take minutes);
        ``on_apply`` hears a plan about to be applied, and ``on_event`` each of its actions as it ends (so
        ``fleetd serve`` knows a long cycle still makes progress)."""
        self.manifest = ManifestTracker(PathSource(source) if isinstance(source, Sequence) else source)
        self._on_progress = on_progress
        self._on_apply = on_apply
        self._on_event = on_event
        self._policy = policy or PlanPolicy()
        self._who = who
        self._clock_ms = clock_ms
        self.last_report: ApplyReport | None = None

    @property
    def desired(self) -> DesiredState | None:
        """The last good desired state."""
        return self.manifest.desired

    def cycle(self, fleet: Fleet, fence: Fence | None = None) -> CycleResult:
        started_ms = self._clock_ms()
        t0 = time.perf_counter()
        loaded = self.manifest.read()
        t1 = time.perf_counter()
        observed = fleet.observe()
        t2 = time.perf_counter()
        errors = loaded.errors
        base = CycleResult(
            started_ms,
            0.0,
            observed,
            len(errors),
            errors[:MAX_ERROR_MESSAGES],
            revision=loaded.revision,
            timings=Timings(load_s=t1 - t0, observe_s=t2 - t1),
        )
        desired = loaded.desired
        if desired is None:
            return _finish(base, t0)
        base = replace(base, desired_digest=desired.digest)
        try:
            revision = loaded.revision.plan_revision() if loaded.revision is not None else None
            planned = plan_once(
                fleet, desired, policy=self._policy, revision=revision, observed=observed, at_ms=self._clock_ms()
            )
        except PlanRefused as exc:
            return _finish(replace(base, refused=str(exc)), t0)
        return self._apply(fleet, desired, planned.plan, fence=fence, base=base, t0=t0, t2=t2)

    def _apply(
        self,
        fleet: Fleet,
        desired: DesiredState,
        the_plan: Plan,
        *,
        fence: Fence | None,
        base: CycleResult,
        t0: float,
        t2: float,
    ) -> CycleResult:
        t3 = time.perf_counter()
        if self._on_apply is not None and not the_plan.is_empty:
            self._on_apply(the_plan, desired)
        applied = apply_once(
            fleet,
            desired,
            the_plan,
            fence=fence,
            who=self._who,
            on_progress=self._on_progress,
            on_event=self._on_event,
        )
        t5 = time.perf_counter()
        timings = base.timings
        if applied.report is None or applied.observed is None:
            timings = Timings(timings.load_s, timings.observe_s, t3 - t2)
            return _finish(replace(base, plan=the_plan, timings=timings), t0)
        self.last_report = applied.report
        timings = Timings(timings.load_s, timings.observe_s, t3 - t2, applied.apply_s, t5 - t3 - applied.apply_s)
        changes: dict[str, Any] = {"observed": applied.observed, "plan": the_plan, "report": applied.report}
        return _finish(replace(base, timings=timings, **changes), t0)


def _finish(result: CycleResult, t0: float) -> CycleResult:
    return replace(result, duration_s=time.perf_counter() - t0)


def summary_line(result: CycleResult) -> str:
    """One line for stderr about a cycle that did something."""
    assert result.plan is not None
    counts: Mapping[str, int] = result.plan.summary()
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    failed = [o for o in (result.report.outcomes if result.report else ()) if o.status != "ok"]
    tail = f"; {failed[0].action_id}: {failed[0].status}: {failed[0].message}" if failed else ""
    return f"applied {parts} -> {result.outcome} in {result.duration_s:.2f} s{tail}"


MAX_ACTION_LINES = 20
"""A cycle that did more says how many more, rather than flooding the log (``/status`` has every outcome)."""


def action_lines(result: CycleResult) -> list[str]:
    """One line per action a cycle applied, naming what it acted on and why, and how it ended:
    ``unload chat/1 on gpu-a: scale_down -> ok in 0.12 s``."""
    if result.plan is None or result.report is None:
        return []
    actions = {a.id: a for a in result.plan.actions}
    lines = []
    for outcome in result.report.outcomes[:MAX_ACTION_LINES]:
        action = actions.get(outcome.action_id)
        if action is None:
            continue
        lines.append(f"{_target(action)}: {action.reason.value} -> {_ended(outcome)}")
    hidden = len(result.report.outcomes) - MAX_ACTION_LINES
    if hidden > 0:
        lines.append(f"... and {hidden} more (GET /status lists every outcome)")
    return lines


def _target(action: Action) -> str:
    if action.instance is not None:
        return f"{action.kind.value} {action.instance}/{action.replica} on {action.node}"
    if action.backend is not None:
        return f"{action.kind.value} {action.backend} on {action.node}"
    return f"{action.kind.value} {action.node}"


def _ended(outcome: ActionOutcome) -> str:
    took = f" in {outcome.duration_ms / 1000:.2f} s"
    if outcome.status == "ok":
        return "ok" + took
    return f"{outcome.status}{took}: {outcome.message}"
