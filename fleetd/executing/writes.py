"""The executor's registry writes: one short transaction each, fenced by the leader's epoch when there is one.

The steps call these instead of the ``Registry`` facade so that every write of a leader's apply checks its
lease epoch in the same transaction (``leases.fence``): a deposed leader cannot land a single write after the
new leader took over. The clean-up writes that only end this executor's own work (releasing its reservation,
counting its failed attempt) are not fenced, so a deposed executor still leaves nothing held behind it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from fleetd.core.observed import ReplicaState, SchedulingRecord
from fleetd.executing.fencing import Fence
from fleetd.registry import (
    apply_log,
    leases,
    nodes,
    pending_ops,
    replicas,
    reservations,
    restart_requests,
    scheduling,
)
from fleetd.registry.facade import Registry


@dataclass(frozen=True, slots=True)
class Writes:
    registry: Registry
    fence: Fence | None = None

    @contextmanager
    def _fenced(self) -> Iterator[Connection]:
        with self.registry.engine.begin() as conn:
            if self.fence is not None:
                leases.fence(conn, self.fence.lease, self.fence.epoch)
            yield conn

    @contextmanager
    def _unfenced(self) -> Iterator[Connection]:
        with self.registry.engine.begin() as conn:
            yield conn

    def now(self) -> int:
        return self.registry.clock()

    def check_fence(self) -> None:
        """Raise ``FencedOut`` when the fence's epoch is no longer the lease's (no-op without a fence)."""
        if self.fence is not None:
            with self._fenced():
                pass

    # the planner's hysteresis records (placement failures, cooldowns)
    def save_scheduling(self, records: Sequence[SchedulingRecord]) -> None:
        with self._fenced() as conn:
            scheduling.save(conn, records, now_ms=self.now())

    # nodes
    def approve(self, node: str) -> None:
        with self._fenced() as conn:
            nodes.approve(conn, node, now_ms=self.now())

    def set_labels(self, node: str, labels: Mapping[str, str], slots: int | None) -> None:
        with self._fenced() as conn:
            nodes.set_manifest_labels(conn, node, labels)
            if slots is not None:
                nodes.set_max_replicas_per_model(conn, node, slots, now_ms=self.now())

    def set_draining(self, node: str) -> None:
        with self._fenced() as conn:
            nodes.set_draining(conn, node, True, now_ms=self.now())

    def set_backend_state(
        self, node: str, backend: str, state: str, *, version: str | None = None, error: str | None = None
    ) -> None:
        with self._fenced() as conn:
            nodes.set_backend_state(conn, node, backend, state, now_ms=self.now(), version=version, error=error)

    # durable intent
    def record_intent(self, node: str, target: str, op: str, payload: Mapping[str, Any]) -> int:
        with self._fenced() as conn:
            return pending_ops.record(conn, node, target, op, payload, now_ms=self.now())

    def complete_op(self, op_id: int) -> None:
        with self._fenced() as conn:
            pending_ops.complete(conn, op_id, now_ms=self.now())

    def fail_op(self, op_id: int, error: str) -> None:
        with self._unfenced() as conn:
            pending_ops.fail(conn, op_id, error, now_ms=self.now())

    # reservations
    def reserve(self, node: str, size: int, op_id: str, *, ttl_ms: int) -> reservations.Reservation | None:
        with self._fenced() as conn:
            return reservations.reserve(conn, node, size, op_id, ttl_ms=ttl_ms, now_ms=self.now())

    def release(self, op_id: str, *, reason: str) -> None:
        with self._unfenced() as conn:
            reservations.release(conn, op_id, now_ms=self.now(), reason=reason)

    # replicas
    def upsert_replica(self, record: replicas.ReplicaRecord) -> None:
        with self._fenced() as conn:
            replicas.upsert(conn, record, now_ms=self.now())
            replicas.end_tombstone(conn, record.instance, record.node, record.replica)

    def set_replica_state(
        self, instance: str, node: str, replica: int, state: ReplicaState, *, error: str | None = None
    ) -> None:
        with self._fenced() as conn:
            replicas.set_state(conn, instance, node, replica, state, now_ms=self.now(), error=error)

    def clear_restart_request(self, instance: str, node: str, replica: int) -> None:
        with self._fenced() as conn:
            restart_requests.clear(conn, instance, node, replica)

    def forget_replica(self, instance: str, node: str, replica: int) -> None:
        with self._fenced() as conn:
            replicas.forget(conn, instance, node, replica, now_ms=self.now())

    def remove_replica(self, instance: str, node: str, replica: int) -> None:
        with self._fenced() as conn:
            replicas.remove(conn, instance, node, replica)
            replicas.end_tombstone(conn, instance, node, replica)

    # apply log
    def record_apply(self, entry: apply_log.ApplyRecord) -> int:
        with self._unfenced() as conn:
            return apply_log.record(conn, entry, lease=self.fence.lease if self.fence is not None else None)


def save_scheduling(registry: Registry, records: Sequence[SchedulingRecord], fence: Fence | None) -> bool:
    """Persist a plan's hysteresis records, as the next plan needs them; ``False`` when ``fence`` is stale
    (the apply that follows is fenced too, and reports the lost leadership)."""
    try:
        Writes(registry, fence).save_scheduling(records)
    except leases.FencedOut:
        return False
    return True
