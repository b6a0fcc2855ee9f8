"""One small idempotent step per action kind: what ``apply`` does to the registry and to the node's agent.

Each step can run again after a crash or a retry and end in the same place: loads of a replica the agent
already runs return its status, unloads of one that is gone succeed, label and approval writes are absolute,
and a forget (a replica on a lost node) only removes the row, asking no agent. A step reads its action's typed
details (``LoadDetails``, ``RestartDetails``, ...), never its reason, which is for people. Steps that start or
stop a process write their durable intent first (``pending_ops``, with a payload from which a restarted
controller can finish or undo the operation), hold VRAM for a start through a reservation tied to that intent,
and always end the intent and the reservation, whether the agent succeeded or not. Failures raise; the
executor turns them into outcomes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.executing.records import replica_record
from fleetd.executing.writes import Writes
from fleetd.planning.plans import (
    Action,
    ActionKind,
    LabelDetails,
    LoadDetails,
    RestartDetails,
    RestartStrategy,
)
from fleetd.registry.leases import FencedOut
from fleetd.registry.replicas import ReplicaRecord
from fleetd.transport.agent_api import AgentClient, AgentError, LaunchRequest, ProgressSink, ReplicaStatus

ReplicaKey = tuple[str, str, int]
"""(instance, node, replica)."""


class StepFailed(Exception):
    """A step could not do its work; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class StepResult:
    message: str
    replica_state: ReplicaState | None = None


@dataclass(frozen=True, slots=True)
class StepContext:
    """What every step may use: the desired specs, the registry writes, the agents, and the replicas' VRAM as
    the registry knew it when the apply started (a ``stop_first`` restart reserves only the growth)."""

    desired: DesiredState
    writes: Writes
    agents: Mapping[str, AgentClient]
    plan_hash: str
    reservation_ttl_ms: int
    previous_vram: Mapping[ReplicaKey, int]
    progress: ProgressSink | None = None
    """Hears a backend install's progress (pip's output, a pull), from the step's worker thread."""


Step = Callable[[StepContext, Action], StepResult]


def run_step(ctx: StepContext, action: Action) -> StepResult:
    return STEPS[action.kind](ctx, action)


# nodes ------------------------------------------------------------------------------------------------------


def approve_node(ctx: StepContext, action: Action) -> StepResult:
    ctx.writes.approve(action.node)
    return StepResult("approved")


def set_labels(ctx: StepContext, action: Action) -> StepResult:
    details = action.details_as(LabelDetails)
    labels, slots = dict(details.labels), details.max_replicas_per_model
    ctx.writes.set_labels(action.node, labels, slots)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)"
    return StepResult(f"labels {shown}" + (f"; {slots} replicas per model" if slots is not None else ""))


def drain_node(ctx: StepContext, action: Action) -> StepResult:
    ctx.writes.set_draining(action.node)
    return StepResult("draining")


def install_backend(ctx: StepContext, action: Action) -> StepResult:
    agent = _agent(ctx, action)
    assert action.backend is not None  # checked by validation
    backend = ctx.desired.backend(action.backend)
    assert backend is not None
    ctx.writes.set_backend_state(action.node, backend.name, "installing")
    try:
        result = agent.install_backend(backend, progress=ctx.progress)
    except Exception as exc:
        with contextlib.suppress(FencedOut):
            ctx.writes.set_backend_state(action.node, backend.name, "failed", error=describe(exc))
        raise
    ctx.writes.set_backend_state(action.node, backend.name, "installed", version=result.version)
    state = "installed" if result.changed else "already installed"
    return StepResult(f"{state}: {backend.name} {result.version} ({result.executable})")


# replicas ---------------------------------------------------------------------------------------------------


def load(ctx: StepContext, action: Action) -> StepResult:
    request = launch_request(ctx.desired, action)
    return _launch(ctx, action, request, request.vram_bytes, lambda agent: agent.load(request))


def restart(ctx: StepContext, action: Action) -> StepResult:
    """``surge`` runs the new process beside the old one until it is healthy, so it needs its full size;
    ``stop_first`` frees the old process's memory first, so it needs only the growth."""
    request = launch_request(ctx.desired, action)
    ctx.writes.clear_restart_request(*replica_key(action))  # done, whatever the outcome: no restart loop
    size = request.vram_bytes
    if action.details_as(RestartDetails).strategy is RestartStrategy.STOP_FIRST:
        old = ctx.previous_vram.get(replica_key(action), 0)
        size = max(0, request.vram_bytes - old)
    return _launch(ctx, action, request, size, lambda agent: agent.restart(request))


def unload(ctx: StepContext, action: Action) -> StepResult:
    instance, node, index = replica_key(action)
    agent = _agent(ctx, action)
    op_id = ctx.writes.record_intent(node, f"{instance}/{index}", "unload", _payload(ctx, action))
    try:
        ctx.writes.set_replica_state(instance, node, index, ReplicaState.STOPPING)
        existed = agent.unload(instance, index)
        ctx.writes.remove_replica(instance, node, index)
    except Exception as exc:
        ctx.writes.fail_op(op_id, describe(exc))
        # Not left ``stopping`` (the planner looks past stopping replicas): failed, so the next plan retries.
        with contextlib.suppress(FencedOut):
            ctx.writes.set_replica_state(instance, node, index, ReplicaState.FAILED, error=describe(exc))
        raise
    ctx.writes.complete_op(op_id)
    return StepResult("stopped" if existed else "was not running on the node; nothing to stop")


def forget(ctx: StepContext, action: Action) -> StepResult:
    """A replica on a lost node (offline, or gone from the registry): its row is removed under its durable
    intent, and no agent is asked (there is none to answer). Its replacement is planned beside this action,
    rather than failing every apply until the node returns. Nothing is lost: a node that comes back reports
    what it still runs, and the next plan stops what is no longer wanted, this replica first (its tombstone)."""
    instance, node, index = replica_key(action)
    op_id = ctx.writes.record_intent(node, f"{instance}/{index}", action.kind.value, _payload(ctx, action))
    ctx.writes.forget_replica(instance, node, index)
    ctx.writes.complete_op(op_id)
    return StepResult(f"node {node} is lost: forgot the replica; if the node returns, its agent reports it")


def _launch(
    ctx: StepContext,
    action: Action,
    request: LaunchRequest,
    reserve_bytes: int,
    start: Callable[[AgentClient], ReplicaStatus],
) -> StepResult:
    """Intent, reservation, ``starting`` row, the agent's start, its status written back; then the reservation
    is released (the node's next heartbeat shows the memory as used) and the intent completed."""
    agent = _agent(ctx, action)
    instance, node, index = replica_key(action)
    reservation = f"{action.id}#{uuid.uuid4().hex[:12]}" if reserve_bytes > 0 else None
    payload = _payload(ctx, action, reservation=reservation, reserve_bytes=reserve_bytes)
    op_id = ctx.writes.record_intent(node, f"{instance}/{index}", action.kind.value, payload)
    row_written = False
    try:
        if (
            reservation is not None
            and ctx.writes.reserve(node, reserve_bytes, reservation, ttl_ms=ctx.reservation_ttl_ms) is None
        ):
            raise StepFailed(
                f"node {node} has not enough free VRAM now ({reserve_bytes} bytes needed): the plan was made "
                "on older readings; plan again"
            )
        ctx.writes.upsert_replica(
            ReplicaRecord(
                instance,
                node,
                index,
                ReplicaState.STARTING,
                config_hash=request.config_hash,
                vram_bytes=request.vram_bytes,
            )
        )
        row_written = True
        status = start(agent)
        ctx.writes.upsert_replica(replica_record(node, status, vram_bytes=status.vram_bytes or request.vram_bytes))
    except Exception as exc:
        _end_failed_launch(ctx, action, op_id, reservation, exc, row_written=row_written)
        raise
    if reservation is not None:
        ctx.writes.release(reservation, reason="done")
    ctx.writes.complete_op(op_id)
    return StepResult(_status_message(status), status.state)


def _end_failed_launch(
    ctx: StepContext, action: Action, op_id: int, reservation: str | None, exc: Exception, *, row_written: bool
) -> None:
    if reservation is not None:
        ctx.writes.release(reservation, reason="failed")
    ctx.writes.fail_op(op_id, describe(exc))
    if row_written:
        instance, node, index = replica_key(action)
        with contextlib.suppress(FencedOut):
            ctx.writes.set_replica_state(instance, node, index, ReplicaState.FAILED, error=describe(exc))


def _status_message(status: ReplicaStatus) -> str:
    where = f" at {status.address}" if status.address else ""
    message = f"{status.state.value}{where}"
    if status.state is not ReplicaState.RUNNING and status.last_error:
        message += f": {status.last_error}"
    return message


# helpers ----------------------------------------------------------------------------------------------------


def launch_request(desired: DesiredState, action: Action) -> LaunchRequest:
    """The agent's request for a load or restart (``check_executable`` made sure every part exists)."""
    assert action.instance is not None and action.replica is not None
    spec = desired.instance(action.instance)
    assert spec is not None
    backend = desired.backend(spec.backend)
    assert backend is not None
    details = launch_details(action)
    return LaunchRequest(
        spec=spec,
        backend=backend,
        replica=action.replica,
        config_hash=details.config_hash,
        vram_bytes=details.vram_bytes,
    )


def launch_details(action: Action) -> LoadDetails | RestartDetails:
    """The details of a load or a restart: the launch config hash and the memory the process takes."""
    if action.kind is ActionKind.RESTART:
        return action.details_as(RestartDetails)
    return action.details_as(LoadDetails)


def replica_key(action: Action) -> ReplicaKey:
    assert action.instance is not None and action.replica is not None
    return (action.instance, action.node, action.replica)


def describe(exc: BaseException) -> str:
    """An exception as a message for people: ours carry one; others get their type name in front."""
    if isinstance(exc, StepFailed | AgentError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _agent(ctx: StepContext, action: Action) -> AgentClient:
    agent = ctx.agents.get(action.node)
    if agent is None:
        raise StepFailed(f"no agent for node {action.node}: it is not connected, so {action.id} cannot run there")
    return agent


def _payload(
    ctx: StepContext, action: Action, *, reservation: str | None = None, reserve_bytes: int = 0
) -> dict[str, Any]:
    """Enough for a restarted controller to finish the operation (repeat it: every step is idempotent) or undo
    it (unload what a load started, release the reservation)."""
    payload: dict[str, Any] = {
        "action": action.id,
        "kind": action.kind.value,
        "plan_hash": ctx.plan_hash,
        "instance": action.instance,
        "node": action.node,
        "replica": action.replica,
    }
    if action.kind in (ActionKind.LOAD, ActionKind.RESTART):
        details = launch_details(action)
        restart = action.kind is ActionKind.RESTART
        strategy = action.details_as(RestartDetails).strategy.value if restart else None
        payload |= {
            "backend": action.backend,
            "config_hash": details.config_hash,
            "vram_bytes": details.vram_bytes,
            "strategy": strategy,
            "reservation": reservation,
            "reserved_bytes": reserve_bytes,
            "undo": "unload" if action.kind is ActionKind.LOAD else None,
        }
    return payload


STEPS: Mapping[ActionKind, Step] = {
    ActionKind.APPROVE_NODE: approve_node,
    ActionKind.SET_LABELS: set_labels,
    ActionKind.DRAIN_NODE: drain_node,
    ActionKind.INSTALL_BACKEND: install_backend,
    ActionKind.LOAD: load,
    ActionKind.RESTART: restart,
    ActionKind.UNLOAD: unload,
    ActionKind.FORGET: forget,
}
