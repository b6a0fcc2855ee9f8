"""The one observe -> plan -> save -> apply path (architecture.md §1): ``plan_once`` and ``apply_once``.

``fleetd plan`` calls ``plan_once``; ``fleetd apply`` calls ``plan_once`` then ``apply_once`` (or only
``apply_once`` for a saved plan, after ``stale_reason`` found it fresh); ``fleetd status`` plans to say whether
the fleet is in sync; the ``serve`` loop runs both on every cycle. Nothing else plans or applies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from fleetd.controlling.estimating import estimate_vram
from fleetd.controlling.fleets import Fleet
from fleetd.controlling.model_checks import plan_checking_models
from fleetd.core.desired import DesiredState, startup_timeout_ms
from fleetd.core.observed import ObservedState
from fleetd.executing import ApplyReport, Fence, apply_plan, save_scheduling
from fleetd.executing.executor import EventSink
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import LoadDetails, Plan, RestartDetails
from fleetd.transport.agent_api import ModelFiles, ProgressSink

STEP_SLACK_S = 120.0
"""Beyond a load's startup deadline: the agent's calls around it (install check, port, spawn, the reply)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan and the observation it was made on."""

    observed: ObservedState
    plan: Plan


@dataclass(frozen=True, slots=True)
class Applied:
    """What an apply did and the fleet observed right after it; both ``None`` for an empty plan (nothing ran,
    so the observation the plan was made on stands)."""

    report: ApplyReport | None
    observed: ObservedState | None
    apply_s: float = 0.0
    """Seconds the executor took (the rest of the call observed the fleet again)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def plan_once(
    fleet: Fleet,
    desired: DesiredState,
    *,
    policy: PlanPolicy | None = None,
    revision: str | None = None,
    observed: ObservedState | None = None,
    at_ms: int | None = None,
    model_files: Mapping[str, ModelFiles] | None = None,
) -> Planned:
    """Observe the fleet (unless ``observed`` is given), ask its agents for ``vram: auto`` estimates, plan, and
    plan again while the nodes the plan loads on lack a model file (``model_checks``). ``model_files``: who is
    asked about model files (default: the fleet's agents). Raises ``PlanRefused`` for a plan the policy does not
    allow (emptying the fleet)."""
    seen = fleet.observe() if observed is None else observed
    estimates = estimate_vram(desired, fleet.agents)
    at = now_ms() if at_ms is None else at_ms
    chosen = policy or PlanPolicy()

    def make_plan(observed_now: ObservedState) -> Plan:
        return plan(desired, observed_now, now_ms=at, policy=chosen, vram_estimates=estimates, revision=revision)

    asked = fleet.agents if model_files is None else model_files
    seen, result = plan_checking_models(make_plan, seen, desired, asked)
    return Planned(seen, result)


def apply_once(
    fleet: Fleet,
    desired: DesiredState,
    the_plan: Plan,
    *,
    fence: Fence | None,
    who: str,
    on_event: EventSink | None = None,
    on_progress: ProgressSink | None = None,
    save_records: bool = True,
) -> Applied:
    """Save the plan's hysteresis records (the next plan needs them, even when nothing is to do), execute the
    plan through the fleet's agents under ``fence``, then observe again. Raises ``PlanMismatch`` (before any
    change) when the plan does not fit ``desired``. ``save_records=False`` when they were saved already, or
    the plan was saved to a file (it carries none)."""
    if save_records:
        save_scheduling(fleet.registry, the_plan.scheduling, fence)
    if the_plan.is_empty:
        return Applied(None, None)
    started = time.perf_counter()
    report = apply_plan(
        the_plan,
        desired,
        fleet.registry,
        fleet.agents,
        on_event=on_event,
        on_progress=on_progress,
        fence=fence,
        who=who,
    )
    apply_s = time.perf_counter() - started
    return Applied(report, fleet.observe(), apply_s)


def stale_reason(saved: Plan, desired: DesiredState | None, observed: ObservedState | None) -> str | None:
    """Why a saved plan may not run any more, or ``None``: the manifest or the fleet changed since it was made
    (LESSONS.md: Terraform applied a saved plan twice). Either check may be skipped by passing ``None``."""
    if desired is not None and desired.digest != saved.desired_digest:
        return (
            f"the manifest changed since the plan was made: planned {short(saved.desired_digest)}, now "
            f"{short(desired.digest)}; plan again"
        )
    if observed is not None and observed.fingerprint != saved.observed_fingerprint:
        return (
            "the fleet changed since the plan was made: plan again "
            f"(planned on {short(saved.observed_fingerprint)}, now {short(observed.fingerprint)})"
        )
    return None


def short(value: str) -> str:
    """``sha256:0123456789ab``: a digest as people read it."""
    algorithm, _, hexdigest = value.partition(":")
    return f"{algorithm}:{hexdigest[:12]}" if hexdigest else value or "(none)"


def longest_step_s(the_plan: Plan, desired: DesiredState) -> float:
    """The longest one action of ``the_plan`` may run without finishing: a load's or a restart's startup deadline
    (scaled with the VRAM the plan gave it, as a controller waiting on a remote load scales it) plus
    ``STEP_SLACK_S``; 0 for a plan without one. ``fleetd serve`` allows a cycle that long without progress."""
    health = {spec.name: spec.health for spec in desired.instances}
    longest = 0.0
    for action in the_plan.actions:
        details = action.details
        if isinstance(details, LoadDetails | RestartDetails) and action.instance in health:
            deadline_ms = startup_timeout_ms(health[action.instance].startup_timeout_ms, details.vram_bytes)
            longest = max(longest, deadline_ms / 1000 + STEP_SLACK_S)
    return longest
