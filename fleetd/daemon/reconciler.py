"""``Reconciler.cycle()``: one reconcile cycle of ``fleetd serve`` (DESIGN.md section 1): observe -> plan -> apply.

A cycle runs to completion and is level-triggered: it reads the manifest and the fleet as they are now and
never asks what event caused it, so a timer tick, a file change and a SIGHUP are all the same call. The
reconciler keeps what must outlive one cycle: the last good desired state (an invalid manifest edit must not
unload the fleet; its errors are recorded and the last good state stays in force, as Argo CD keeps the last
synced revision), the ``vram: auto`` estimates (reading GGUF headers every few seconds is waste), and the last
executor report for ``/status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fleetd.agent.vram_estimate import EstimateError, context_size, estimate_instance
from fleetd.core.desired import DesiredState, InstanceSpec
from fleetd.core.observed import ObservedState
from fleetd.executing import ApplyReport, Fence, apply_plan, save_scheduling
from fleetd.manifest.loading import load_read_manifest
from fleetd.manifest.reading import files_fingerprint, read_manifest_files
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import Plan, PlanRefused
from fleetd.registry.facade import Registry
from fleetd.transport.agent_api import AgentClient, ProgressSink

MAX_ERROR_MESSAGES = 5
"""How many of an invalid manifest's error messages a cycle keeps (the count is always complete)."""


class Fleet(Protocol):
    """What a cycle needs of the fleet: the registry, the node's agent and a fresh observation.
    ``fleetd.daemon.embedded.Embedded`` is one."""

    @property
    def registry(self) -> Registry: ...

    @property
    def node(self) -> str: ...

    @property
    def agent(self) -> AgentClient: ...

    def observe(self) -> ObservedState: ...


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


class VramEstimates:
    """``vram: auto`` estimates for the planner, cached by (model path, mtime, context size)."""

    def __init__(self, estimate: Callable[[InstanceSpec], int] | None = None) -> None:
        self._estimate = estimate or (lambda spec: estimate_instance(spec).total)
        self._cache: dict[tuple[str, int, int | None], int | None] = {}

    def for_desired(self, desired: DesiredState) -> dict[str, int]:
        found: dict[str, int] = {}
        for spec in desired.instances:
            if spec.vram_bytes is None:
                size = self._one(spec)
                if size is not None:
                    found[spec.name] = size
        return found

    def _one(self, spec: InstanceSpec) -> int | None:
        try:
            mtime = Path(spec.model).stat().st_mtime_ns
        except OSError:
            mtime = -1  # a model that is not there (yet): the load reports it; a later cycle retries
        key = (spec.model, mtime, context_size(spec))
        if key not in self._cache:
            try:
                self._cache[key] = self._estimate(spec)
            except (EstimateError, OSError):
                self._cache[key] = None
        return self._cache[key]


class Reconciler:
    """Runs cycles for one manifest; used from one thread at a time (the serve worker)."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        policy: PlanPolicy | None = None,
        estimates: VramEstimates | None = None,
        who: str = "fleetd serve",
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_progress: ProgressSink | None = None,
    ) -> None:
        """``on_progress`` hears backend installs while a cycle runs them (a pip build can take minutes)."""
        self._paths = tuple(paths)
        self._on_progress = on_progress
        self._policy = policy or PlanPolicy()
        self._estimates = estimates or VramEstimates()
        self._who = who
        self._clock_ms = clock_ms
        self._desired: DesiredState | None = None
        self._loaded_fingerprint: str | None = None
        self._load_errors: tuple[str, ...] = ()
        self.last_report: ApplyReport | None = None

    @property
    def desired(self) -> DesiredState | None:
        """The last good desired state."""
        return self._desired

    def cycle(self, fleet: Fleet, fence: Fence | None = None) -> CycleResult:
        started_ms = self._clock_ms()
        t0 = time.perf_counter()
        errors = self._load()
        t1 = time.perf_counter()
        observed = fleet.observe()
        t2 = time.perf_counter()
        desired = self._desired
        timings = Timings(load_s=t1 - t0, observe_s=t2 - t1)
        base = CycleResult(
            started_ms, 0.0, observed, len(errors), tuple(errors[:MAX_ERROR_MESSAGES]), timings=timings
        )
        if desired is None:
            return _finish(base, t0)
        base = _with(base, desired_digest=desired.digest)
        try:
            result = plan(
                desired,
                observed,
                now_ms=self._clock_ms(),
                policy=self._policy,
                vram_estimates=self._estimates.for_desired(desired),
            )
        except PlanRefused as exc:
            return _finish(_with(base, refused=str(exc)), t0)
        t3 = time.perf_counter()
        save_scheduling(fleet.registry, result.scheduling, fence)
        if result.is_empty:
            timings = Timings(timings.load_s, timings.observe_s, t3 - t2)
            return _finish(_with(base, plan=result, timings=timings), t0)
        report = apply_plan(
            result,
            desired,
            fleet.registry,
            {fleet.node: fleet.agent},
            on_progress=self._on_progress,
            fence=fence,
            who=self._who,
        )
        self.last_report = report
        t4 = time.perf_counter()
        after = fleet.observe()
        t5 = time.perf_counter()
        timings = Timings(timings.load_s, timings.observe_s, t3 - t2, t4 - t3, t5 - t4)
        return _finish(_with(base, observed=after, plan=result, report=report, timings=timings), t0)

    def _load(self) -> list[str]:
        """Read the manifest; a valid one becomes the desired state, an invalid one only reports its errors.

        Files whose bytes did not change since the last cycle are not parsed again: the last outcome stands
        (a manifest of thousands of instances takes a large share of a second to validate), and the desired
        state stays the same value, so what the planner memoises per state carries over between cycles.
        """
        files, problems = read_manifest_files(self._paths)
        fingerprint = files_fingerprint(files, problems)
        if fingerprint == self._loaded_fingerprint:
            return list(self._load_errors)
        loaded = load_read_manifest(files, problems)
        self._loaded_fingerprint = fingerprint
        if loaded.desired is not None:
            self._desired = loaded.desired
            self._load_errors = ()
        else:
            self._load_errors = tuple(
                f"{d.location}: {d.message}" if d.location else d.message for d in loaded.errors
            ) or ("the manifest is invalid",)
        return list(self._load_errors)


def _with(result: CycleResult, **changes: Any) -> CycleResult:
    return replace(result, **changes)


def _finish(result: CycleResult, t0: float) -> CycleResult:
    return _with(result, duration_s=time.perf_counter() - t0)


def summary_line(result: CycleResult) -> str:
    """One line for stderr about a cycle that did something."""
    assert result.plan is not None
    counts: Mapping[str, int] = result.plan.summary()
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    failed = [o for o in (result.report.outcomes if result.report else ()) if o.status != "ok"]
    tail = f"; {failed[0].action_id}: {failed[0].status}: {failed[0].message}" if failed else ""
    return f"applied {parts} -> {result.outcome} in {result.duration_s:.2f} s{tail}"
