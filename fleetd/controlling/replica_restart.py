"""Restart replicas on request (``fleetd replica restart INSTANCE[/N]``), through the one controller path.

The request is state, not a side channel: it is recorded on the replicas' registry rows, the planner turns it
into a ``restart`` (reason ``requested``; a failed replica gets a fresh process and its restarts back), and the
restart step clears it. When no other controller leads, this runs one cycle narrowed to the instance at once;
while a ``serve`` leads, that ``serve`` does it on its next cycle, and one on this machine is woken by SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from dataclasses import dataclass

from fleetd.controlling import leadership
from fleetd.controlling.oneshot import ApplyRequest, apply_locked, leading_fleet
from fleetd.controlling.opening import AgentAccess
from fleetd.core.desired import DesiredState
from fleetd.core.names import NAME_PATTERN
from fleetd.planning.plans import ActionKind
from fleetd.registry import restart_requests
from fleetd.registry.facade import open_registry
from fleetd.transport.security import SecurityError

_TARGET = re.compile(rf"^(?P<instance>{NAME_PATTERN.strip('^$')})(?:/(?P<index>\d+))?$")


@dataclass(frozen=True, slots=True)
class RestartResult:
    lines: tuple[str, ...] = ()
    """What happened, one line per restarted replica."""
    error: str | None = None
    handed_to: str | None = None
    """The controller that will carry the request out, when it was not this process."""
    exit_code: int | None = None
    """The apply's exit code when this process restarted the replicas."""


def parse_target(target: str) -> tuple[str, int | None]:
    """``INSTANCE`` or ``INSTANCE/N``; ``ValueError`` with a message for anything else."""
    found = _TARGET.match(target)
    if found is None:
        raise ValueError(f"replica {target!r}: expected INSTANCE or INSTANCE/N (e.g. qwen-7b or qwen-7b/0)")
    index = found.group("index")
    return found.group("instance"), int(index) if index is not None else None


def restart_replicas(
    desired: DesiredState,
    instance: str,
    index: int | None,
    *,
    database_url: str | None,
    access: AgentAccess | None = None,
) -> RestartResult:
    if desired.instance(instance) is None:
        return RestartResult(error=f"no instance named {instance!r} in the manifest")
    registry = open_registry(database_url)
    try:
        marked = restart_requests.request(registry, instance, index)
        if not marked:
            where = f"{instance}/{index}" if index is not None else instance
            return RestartResult(error=f"no replica {where} in the registry; `fleetd status` lists the replicas")
        try:
            lease = leadership.acquire(registry, leadership.holder_id("replica-restart"), timeout_s=0)
        except leadership.LockBusy as busy:
            holder = busy.holder or "another fleetd"
            _wake(holder)
            return RestartResult(lines=_requested(marked), handed_to=holder)
        try:
            with leading_fleet(registry, lease, desired, database_url, access or AgentAccess()) as fleet:
                result = apply_locked(fleet, ApplyRequest(desired, targets=(instance,)), lease)
        except SecurityError as exc:
            return RestartResult(error=str(exc))
        if result.error is not None:
            return RestartResult(error=result.error)
        lines = tuple(
            f"{o.action_id}: {o.status}" + (f" ({o.message})" if o.message else "")
            for o in (result.report.outcomes if result.report is not None else ())
            if o.action_id.startswith(f"{ActionKind.RESTART.value}:")
        )
        return RestartResult(lines=lines or _requested(marked), exit_code=result.exit_code)
    finally:
        registry.engine.dispose()


def _requested(marked: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(f"restart requested: replica {index} on {node}" for node, index in marked)


def _wake(holder: str) -> None:
    """SIGHUP a ``serve`` on this machine (its holder id is ``serve:<host>:<pid>``): it runs a cycle now."""
    parsed = leadership.parse_holder(holder)
    if parsed is not None and parsed[0] == "serve" and parsed[1] == socket.gethostname():
        with contextlib.suppress(OSError):
            os.kill(parsed[2], signal.SIGHUP)
