"""``apply_plan``: run a plan's actions through their steps, in dependency order and in parallel
(architecture.md §1, §5).

Independent actions run at once on a thread pool (agent calls wait on processes starting, so threads suffice),
at most ``per_node_limit`` at a time on one node so that a node is never asked to start many processes at once.
An action runs only after every action it depends on succeeded; when one failed or was skipped, its dependents
are skipped, and everything else still runs: an apply never stops at the first failure. Under a leader's
``Fence``, an executor whose lease was taken over stops starting actions (they are skipped, "lost leadership").
At the end the apply is written to the apply log, and the report lists every action in the plan's order.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.executing.fencing import Fence
from fleetd.executing.report import EXIT_CONVERGED, EXIT_ERROR, ActionOutcome, ApplyReport, OutcomeStatus
from fleetd.executing.steps import ReplicaKey, StepContext, describe, run_step
from fleetd.executing.validation import check_executable
from fleetd.executing.writes import Writes
from fleetd.planning.plans import Action, ActionKind, Plan
from fleetd.registry.apply_log import ApplyRecord
from fleetd.registry.facade import Registry
from fleetd.registry.leases import FencedOut
from fleetd.transport.agent_api import AgentClient, ProgressSink

EventSink = Callable[[ActionOutcome], None]
LOST_LEADERSHIP = "lost leadership"


def apply_plan(
    plan: Plan,
    desired: DesiredState,
    registry: Registry,
    agents: Mapping[str, AgentClient],
    *,
    per_node_limit: int = 2,
    max_workers: int = 8,
    reservation_ttl_ms: int = 15 * 60_000,
    on_event: EventSink | None = None,
    on_progress: ProgressSink | None = None,
    fence: Fence | None = None,
    who: str = "fleetd",
) -> ApplyReport:
    """Execute ``plan`` and report every action's outcome (in plan order); never stops at the first failure.

    Raises ``PlanMismatch`` (before any change) when the plan does not fit ``desired``. ``on_event`` is called
    on the calling thread with each outcome as it happens; ``on_progress`` hears backend installs as they run
    (from worker threads). ``who`` goes to the apply log.
    """
    if per_node_limit < 1 or max_workers < 1:
        raise ValueError("per_node_limit and max_workers must be at least 1")
    check_executable(plan, desired)
    started_ms = registry.clock()
    writes = Writes(registry, fence)
    ctx = StepContext(
        desired=desired,
        writes=writes,
        agents=agents,
        plan_hash=plan.hash,
        reservation_ttl_ms=reservation_ttl_ms,
        previous_vram=_previous_vram(plan, registry),
        progress=on_progress,
    )
    run = _Run(plan, ctx, per_node_limit, max_workers, on_event)
    run.execute()
    report = ApplyReport(plan.hash, tuple(run.outcomes[a.id] for a in plan.actions))
    if plan.actions:
        _log(plan, report, writes, who=who, started_ms=started_ms, fence=fence)
    return report


def _previous_vram(plan: Plan, registry: Registry) -> dict[ReplicaKey, int]:
    """The VRAM the replicas this plan restarts hold, as the registry knows it now (one read, only if needed).
    A failed replica has no process, so it holds none: its restart in place reserves its whole size, as the
    planner counted it."""
    if not any(a.kind is ActionKind.RESTART for a in plan.actions):
        return {}
    return {
        (r.instance, r.node, r.replica): 0 if r.state is ReplicaState.FAILED else r.vram_bytes
        for r in registry.snapshot().replicas
    }


def _log(
    plan: Plan, report: ApplyReport, writes: Writes, *, who: str, started_ms: int, fence: Fence | None
) -> None:
    code = report.exit_code(plan)
    entry = ApplyRecord(
        manifest_digest=plan.desired_digest,
        plan_hash=plan.hash,
        actions=[o.log_entry() for o in report.outcomes],
        outcome="ok" if code == EXIT_CONVERGED else "failed" if code == EXIT_ERROR else "degraded",
        who=who,
        started_ms=started_ms,
        finished_ms=writes.now(),
        manifest_revision=plan.revision,
        lease_epoch=fence.epoch if fence is not None else None,
    )
    with contextlib.suppress(FencedOut):  # a deposed leader's apply is not the fleet's history
        writes.record_apply(entry)


@dataclass(frozen=True, slots=True)
class _Done:
    outcome: ActionOutcome
    lost_leadership: str | None = None


def _execute(ctx: StepContext, action: Action) -> _Done:
    """One action on a worker thread: the fence first, then its step; every end becomes an outcome."""
    started = time.perf_counter_ns()

    def done(status: OutcomeStatus, message: str, replica_state: str | None = None) -> ActionOutcome:
        elapsed = (time.perf_counter_ns() - started) // 1_000_000
        return ActionOutcome(action.id, action.kind.value, action.node, status, message, elapsed, replica_state)

    try:
        ctx.writes.check_fence()
    except FencedOut as exc:
        return _Done(done("skipped", f"{LOST_LEADERSHIP}: {exc}"), lost_leadership=str(exc))
    try:
        result = run_step(ctx, action)
    except FencedOut as exc:
        return _Done(done("failed", f"{LOST_LEADERSHIP} during this action: {exc}"), lost_leadership=str(exc))
    except Exception as exc:  # an apply never stops at one failure
        return _Done(done("failed", describe(exc)))
    state = result.replica_state.value if result.replica_state is not None else None
    return _Done(done("ok", result.message, state))


@dataclass
class _Run:
    """The scheduling state of one apply, used from the calling thread only (workers just run steps).

    Kahn's algorithm over ``depends_on``: an action becomes ready when its last dependency succeeded; ready
    actions start in plan order, except that one whose node already runs ``per_node_limit`` actions waits in its
    node's queue until a slot there frees. Each completion costs O(dependents), so large plans stay cheap.
    """

    plan: Plan
    ctx: StepContext
    per_node_limit: int
    max_workers: int
    on_event: EventSink | None
    outcomes: dict[str, ActionOutcome] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    unresolved: dict[str, int] = field(default_factory=dict)
    """Action id -> how many of its dependencies have not finished yet (only for actions not started)."""
    dependents: dict[str, list[str]] = field(default_factory=dict)
    ready: list[int] = field(default_factory=list)
    """A heap of plan positions whose dependencies all succeeded."""
    node_queues: dict[str, list[int]] = field(default_factory=dict)
    """Per node, a heap of ready positions waiting for a slot on that node."""
    running: dict[Future[_Done], Action] = field(default_factory=dict)
    per_node: Counter[str] = field(default_factory=Counter)
    lost_leadership: str | None = None

    def execute(self) -> None:
        actions = self.plan.actions
        self.position = {a.id: i for i, a in enumerate(actions)}
        for index, action in enumerate(actions):
            deps = set(action.depends_on)
            self.unresolved[action.id] = len(deps)
            for dep in deps:
                self.dependents.setdefault(dep, []).append(action.id)
            if not deps:
                heapq.heappush(self.ready, index)
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="fleetd-apply") as pool:
            self._start_ready(pool)
            while self.running:
                finished, _ = wait(self.running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: self.position[self.running[f].id]):
                    self._finish(future)
                if self.lost_leadership is not None:
                    self._skip_everything_not_started()
                self._start_ready(pool)
        missing = [a.id for a in actions if a.id not in self.outcomes]
        assert not missing, f"actions never became ready: {missing}"

    def _start_ready(self, pool: ThreadPoolExecutor) -> None:
        while self.ready and len(self.running) < self.max_workers:
            action = self.plan.actions[heapq.heappop(self.ready)]
            if self.per_node[action.node] >= self.per_node_limit:
                heapq.heappush(self.node_queues.setdefault(action.node, []), self.position[action.id])
                continue
            del self.unresolved[action.id]
            self.per_node[action.node] += 1
            self.running[pool.submit(_execute, self.ctx, action)] = action

    def _finish(self, future: Future[_Done]) -> None:
        action = self.running.pop(future)
        self.per_node[action.node] -= 1
        queued = self.node_queues.get(action.node)
        if queued:
            heapq.heappush(self.ready, heapq.heappop(queued))
        done = future.result()
        if done.lost_leadership is not None and self.lost_leadership is None:
            self.lost_leadership = done.lost_leadership
        self._resolve(done.outcome)

    def _resolve(self, outcome: ActionOutcome) -> None:
        """Record an outcome and pass it on: dependents of a success may become ready, dependents of a failure
        or a skip are skipped (and theirs, in turn)."""
        pending = [outcome]
        while pending:
            current = pending.pop()
            self._record(current)
            for dependent in self.dependents.get(current.action_id, ()):
                if dependent in self.outcomes or dependent not in self.unresolved:
                    continue
                if current.status != "ok":
                    why = "failed" if current.status == "failed" else "was skipped"
                    del self.unresolved[dependent]
                    pending.append(self._skipped(dependent, f"depends on {current.action_id} which {why}"))
                    continue
                self.unresolved[dependent] -= 1
                if self.unresolved[dependent] == 0:
                    heapq.heappush(self.ready, self.position[dependent])

    def _skip_everything_not_started(self) -> None:
        message = f"{LOST_LEADERSHIP}: {self.lost_leadership}"
        for action_id in sorted(self.unresolved, key=self.position.__getitem__):
            self._record(self._skipped(action_id, message))
        self.unresolved.clear()
        self.ready.clear()
        self.node_queues.clear()

    def _skipped(self, action_id: str, message: str) -> ActionOutcome:
        action = self.plan.actions[self.position[action_id]]
        return ActionOutcome(action.id, action.kind.value, action.node, "skipped", message, 0)

    def _record(self, outcome: ActionOutcome) -> None:
        self.outcomes[outcome.action_id] = outcome
        if self.on_event is not None:
            self.on_event(outcome)
