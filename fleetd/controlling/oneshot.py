"""The one-shot commands' side of the controller path: ``fleetd plan``, ``apply`` and ``status`` open the fleet
here, under the controller lease where they may act, and run ``plan_once`` / ``apply_once`` / ``status_once``.

Who may act: ``apply`` holds the ``controller`` lease from before the agent starts until the end and hands its
fencing epoch to the executor; it waits for a one-shot command's lease (``--lock-timeout``) and not at all for a
``serve``'s, which leads and applies its own manifest for as long as it runs. ``status`` takes the lease only if
it is free: while another controller holds it (a running ``serve``, an apply), it shows the registry as that
controller last recorded it, since a second agent would supervise the same processes twice (two restarts of one
crash). A registry this user cannot write (an operator in the service's group) is read the same way, and
neither migrated nor written. ``plan`` never starts an agent.
The CLI formats what these return and turns it into an exit code; it decides nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from fleetd.controlling import leadership
from fleetd.controlling.cycles import Planned, apply_once, plan_once, stale_reason
from fleetd.controlling.embedded import preview_local_node
from fleetd.controlling.fleets import RecordedFleet, SnapshotFleet
from fleetd.controlling.opening import (
    AgentAccess,
    FenceSource,
    OpenFleet,
    estimate_readers,
    local_model_files,
    no_fence,
    open_fleet,
)
from fleetd.controlling.status import FleetStatus, Manifest, status_once
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState
from fleetd.executing import ApplyReport, PlanMismatch, save_scheduling
from fleetd.executing.report import ActionOutcome
from fleetd.planning.planner import PlanPolicy
from fleetd.planning.plans import Plan, PlanRefused
from fleetd.planning.targeting import only_targets
from fleetd.registry.engine import default_database_url
from fleetd.registry.facade import Registry, open_registry, open_registry_to_read
from fleetd.registry.leases import LeaseInfo
from fleetd.transport.agent_api import CallerFence, InstallProgress
from fleetd.transport.security import SecurityError


def plan_fleet(
    desired: DesiredState,
    *,
    database_url: str | None,
    policy: PlanPolicy,
    revision: str | None,
    observed: ObservedState | None = None,
    access: AgentAccess | None = None,
) -> Planned:
    """Plan against ``observed`` (a recorded snapshot) or the registry, starting no agent. On the default
    (embedded) registry, a manifest without ``nodes`` plans on this machine even before the first apply
    registered it. With ``access`` and remote nodes, their agents estimate ``vram: auto`` and say which model
    files they lack (read-only calls); this machine's node looks at its own disk (``local_model_files``).
    Raises ``PlanRefused``; a database failure raises ``SQLAlchemyError``; ``SecurityError`` for ``access``."""
    if observed is not None:
        return plan_once(SnapshotFleet(observed), desired, policy=policy, revision=revision)
    registry = open_registry_to_read(database_url)
    readers = estimate_readers(desired, access)
    try:
        preview = database_url is None and not desired.nodes_declared
        fleet = RecordedFleet(registry, preview_local_node if preview else _unchanged, readers)
        files = {**readers, **local_model_files(desired)}
        return plan_once(fleet, desired, policy=policy, revision=revision, model_files=files)
    finally:
        registry.engine.dispose()
        for reader in readers.values():
            reader.close()


def _unchanged(observed: ObservedState) -> ObservedState:
    return observed


@dataclass(frozen=True, slots=True)
class StatusReport:
    observed: ObservedState
    status: FleetStatus
    holder: str | None
    """Who holds the controller lease when it was not ours (the observation is then the registry's record)."""
    registry_url: str
    """The registry that was read (not redacted: the CLI hides a password before printing it)."""
    read_only: bool
    """This user cannot write the registry: it was read as recorded, without migrating or writing anything."""
    ever_applied: bool
    """Whether a controller (``apply`` or ``serve``) ever applied a plan to this registry: when not, it is likely
    not the one the service uses (another state dir or database)."""


def status_fleet(
    database_url: str | None, manifest: Manifest | None, access: AgentAccess | None = None
) -> StatusReport:
    """The fleet as its agents see it, taken under the controller lease; while another controller holds the
    lease, or when this user cannot write the registry, the registry as a controller last recorded it (a
    read-only registry is neither migrated nor written: ``SchemaNotCurrent`` when its schema is behind). Raises
    ``SecurityError`` when the manifest's nodes have addresses and ``access`` cannot reach them."""
    registry = open_registry_to_read(database_url)
    try:
        found = partial(
            StatusReport,
            registry_url=database_url or default_database_url(),
            read_only=registry.read_only,
            ever_applied=registry.ever_applied(),
        )
        if registry.read_only:
            observed, status = status_once(RecordedFleet(registry), manifest)
            return found(observed, status, registry.lease_holder(leadership.CONTROLLER_LEASE))
        try:
            held = leadership.acquire(registry, leadership.holder_id("status"), timeout_s=0)
        except leadership.LockBusy as busy:
            observed, status = status_once(RecordedFleet(registry), manifest)
            return found(observed, status, busy.holder or "another fleetd")
        desired = manifest.desired if manifest is not None else None
        with (
            leadership.renewed(registry, held),
            opened_fleet(desired, database_url, access or AgentAccess()) as fleet,
        ):
            observed, status = status_once(fleet, manifest, observed=fleet.observe_settled())
            return found(observed, status, None)
    finally:
        registry.engine.dispose()


class ApplyListener(Protocol):
    """What ``apply_fleet`` tells the person running it, and asks them."""

    def planned(self, plan: Plan) -> None:
        """The plan about to run (shown before ``confirm``)."""
        ...

    def confirm(self, plan: Plan) -> str | None:
        """``None`` to go ahead, or why not (the apply then changes nothing)."""
        ...

    def outcome(self, outcome: ActionOutcome) -> None: ...

    def progress(self, event: InstallProgress) -> None: ...

    def waiting(self, holder: str, timeout_s: float) -> None:
        """Another fleetd holds the controller lease (``holder``, in words): the apply waits up to
        ``timeout_s``."""
        ...


@dataclass(frozen=True, slots=True)
class ApplyRequest:
    desired: DesiredState
    revision: str | None = None
    saved: Plan | None = None
    """A plan saved by ``fleetd plan --out``: executed exactly, or refused as stale."""
    targets: tuple[str, ...] = ()
    allow_empty: bool = False
    lock_timeout_s: float = 30.0
    access: AgentAccess = field(default_factory=AgentAccess)
    """How remote agents are reached, when the manifest's nodes have addresses."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    plan: Plan | None = None
    report: ApplyReport | None = None
    error: str | None = None
    """Why nothing (more) was applied: refused, stale, cancelled, not fitting the manifest, the lock busy."""
    lease_lost: bool = False

    @property
    def exit_code(self) -> int:
        """0 converged and healthy, 1 error, 3 applied (or nothing to apply) but unhealthy or unschedulable."""
        if self.error is not None or self.lease_lost or self.plan is None:
            return 1
        if self.report is None:
            return 3 if self.plan.unschedulable else 0
        return self.report.exit_code(self.plan)


def apply_fleet(request: ApplyRequest, *, database_url: str | None, listener: ApplyListener) -> ApplyResult:
    """Observe, plan (or check the saved plan), confirm and execute, under the controller lease."""
    registry = open_registry(database_url)
    try:
        try:
            lease = _take_lease(registry, request.lock_timeout_s, listener)
        except leadership.LockBusy as exc:
            return ApplyResult(error=_busy_line(exc))
        try:
            with leading_fleet(registry, lease, request.desired, database_url, request.access) as fleet:
                result = apply_locked(fleet, request, lease, listener)
        except SecurityError as exc:
            return ApplyResult(error=str(exc))
        return replace(result, lease_lost=lease.lost.is_set())
    finally:
        registry.engine.dispose()


def _take_lease(registry: Registry, timeout_s: float, listener: ApplyListener) -> leadership.HeldLease:
    """The controller lease for an apply: waited for up to ``timeout_s`` while a one-shot command holds it (the
    listener hears who, once per holder), not at all while a ``serve`` leads: it keeps the lease while it runs."""
    heard: set[str] = set()

    def keep_waiting(info: LeaseInfo) -> bool:
        if leadership.holder_role(info.holder) == "serve":
            return False
        if info.holder not in heard:
            heard.add(info.holder)
            listener.waiting(leadership.describe_holder(info.holder, info.epoch), timeout_s)
        return True

    return leadership.acquire(
        registry, leadership.holder_id("apply"), timeout_s=timeout_s, keep_waiting=keep_waiting
    )


def _busy_line(busy: leadership.LockBusy) -> str:
    """Why the apply did not run, and what to do: one line."""
    if busy.serve_leads or busy.holder is None:
        return str(busy)
    return f"{busy}; try again when it is done, or wait longer with --lock-timeout"


def apply_locked(
    fleet: OpenFleet,
    request: ApplyRequest,
    lease: leadership.HeldLease,
    listener: ApplyListener | None = None,
) -> ApplyResult:
    """Everything an apply does under the lease; without a listener nothing is shown or asked."""
    listener = listener or SilentListener()
    observed = fleet.observe_settled()
    if request.saved is not None:
        the_plan = request.saved
        stale = stale_reason(the_plan, None, observed)
        if stale is not None:
            return ApplyResult(error=stale)
    else:
        policy = PlanPolicy(allow_empty=request.allow_empty)
        try:
            the_plan = plan_once(
                fleet, request.desired, policy=policy, revision=request.revision, observed=observed
            ).plan
        except PlanRefused as exc:
            return ApplyResult(error=f"plan refused: {exc}")
        save_scheduling(fleet.registry, the_plan.scheduling, lease.fence)  # as serve does, every plan
        if request.targets:
            the_plan = only_targets(the_plan, request.targets)
    if the_plan.is_empty:
        return ApplyResult(plan=the_plan)
    listener.planned(the_plan)
    refusal = listener.confirm(the_plan)
    if refusal is not None:
        return ApplyResult(plan=the_plan, error=refusal)
    try:
        applied = apply_once(
            fleet,
            request.desired,
            the_plan,
            fence=lease.fence,
            who=lease.fence.holder,
            on_event=listener.outcome,
            on_progress=listener.progress,
            save_records=False,
        )
    except PlanMismatch as exc:
        return ApplyResult(plan=the_plan, error=str(exc))
    return ApplyResult(plan=the_plan, report=applied.report)


class SilentListener:
    """An ``ApplyListener`` that approves every plan and says nothing (targeted cycles, tests)."""

    def planned(self, plan: Plan) -> None:
        return None

    def confirm(self, plan: Plan) -> str | None:
        return None

    def outcome(self, outcome: ActionOutcome) -> None:
        return None

    def progress(self, event: InstallProgress) -> None:
        return None

    def waiting(self, holder: str, timeout_s: float) -> None:
        return None


@contextlib.contextmanager
def leading_fleet(
    registry: Registry,
    lease: leadership.HeldLease,
    desired: DesiredState,
    database_url: str | None,
    access: AgentAccess,
) -> Iterator[OpenFleet]:
    """The fleet, opened and used while ``lease`` is renewed; remote agents hear its fencing epoch (and no
    epoch once the lease is lost, which every agent refuses)."""
    held = CallerFence(lease.fence.epoch, lease.fence.holder)

    def fence() -> CallerFence | None:
        return None if lease.lost.is_set() else held

    with leadership.renewed(registry, lease), opened_fleet(desired, database_url, access, fence) as fleet:
        yield fleet


@contextlib.contextmanager
def opened_fleet(
    desired: DesiredState | None, database_url: str | None, access: AgentAccess, fence: FenceSource = no_fence
) -> Iterator[OpenFleet]:
    """The fleet ``desired`` describes (``open_fleet``), closed at the end with its replicas left running."""
    fleet = open_fleet(desired, database_url=database_url, access=access, fence=fence)
    try:
        yield fleet
    finally:
        fleet.close(stop_replicas=False)


def manifest_targets_unknown(desired: DesiredState, targets: Sequence[str]) -> list[str]:
    """The ``--target`` names that are no instance of the manifest."""
    return sorted({t for t in targets if desired.instance(t) is None})
