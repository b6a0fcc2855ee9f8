"""``Registry``: an engine and a clock with one short transaction per call, for the executor, agents and daemon.

Callers that must compose several writes into one transaction use the query modules directly with
``registry.engine.begin()``. ``open_registry`` migrates the schema on start, so a new state dir or database
just works. A SQLite registry comes with its ``InstanceLock`` (``instance_lock.py``): the file's identity as
opened, and the lock that goes with the controller lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from fleetd.core.observed import NodeStatus, ObservedState
from fleetd.registry import apply_log, credentials, join_tokens, leases, nodes, pending_ops, replicas, reservations
from fleetd.registry.engine import (
    Access,
    default_database_url,
    normalise_url,
    open_engine,
    read_only,
    registry_access,
    sqlite_file,
)
from fleetd.registry.instance_lock import InstanceLock
from fleetd.registry.migrating import check_current, upgrade
from fleetd.registry.snapshots import SnapshotCache, snapshot

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch."""


def system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class RegistryNotWritable(RuntimeError):
    """A command that writes the registry, run by a user who may only read it."""

    def __init__(self) -> None:
        super().__init__(
            "this user may only read it (file permissions, or a mode=ro URL) and this command writes it; run it "
            "as the user the service runs as (e.g. sudo -u fleetd)"
        )


def open_registry(
    url: str | None = None, *, clock: Clock = system_clock_ms, migrate: bool = True, read_only: bool = False
) -> Registry:
    """Open the registry at ``url`` (default: SQLite under the state dir) and bring its schema up to date;
    ``RegistryNotWritable`` when this user may only read it (``engine.registry_access``), before any write.

    ``read_only``: open such a registry to read it; create and migrate nothing, and raise ``SchemaNotCurrent``
    when its schema is not the newest, since it cannot be upgraded from here."""
    url = normalise_url(url or default_database_url())
    if not read_only and registry_access(url) is Access.READ_ONLY:
        raise RegistryNotWritable()
    engine = open_engine(url, read_only=read_only)
    try:
        if read_only:
            check_current(engine)
        elif migrate:
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    database = sqlite_file(url) if not read_only else None
    return Registry(engine, clock, read_only=read_only, instance_lock=InstanceLock(database) if database else None)


def open_registry_to_read(url: str | None = None, *, clock: Clock = system_clock_ms) -> Registry:
    """The registry for a command that only reads it: opened read-only when this user cannot write it (see
    ``open_registry``), else as every command opens it. Its ``read_only`` says which."""
    return open_registry(url, clock=clock, read_only=registry_access(url) is Access.READ_ONLY)


@dataclass(frozen=True)
class Registry:
    engine: Engine
    clock: Clock = field(default=system_clock_ms)
    read_only: bool = False
    """Opened read-only (``open_registry_to_read`` on a registry this user cannot write): every write fails."""
    instance_lock: InstanceLock | None = field(default=None, compare=False)
    """A writable SQLite file's instance lock and identity (``None`` for PostgreSQL, whose lease row is the truth,
    and for a registry opened read-only, which never leads)."""
    _single_statements: Engine = field(init=False, repr=False, compare=False)
    _snapshots: SnapshotCache = field(init=False, repr=False, compare=False, default_factory=SnapshotCache)
    """The last snapshot's values, reused by the next one where rows did not change (``registry/snapshots.py``)."""

    def __post_init__(self) -> None:
        # On PostgreSQL a reserve or a release is one atomic statement, so it runs in autocommit: no BEGIN and
        # COMMIT round trips. On SQLite they are two statements and keep their transaction.
        single = self.engine
        if self.engine.dialect.name == "postgresql":
            single = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        object.__setattr__(self, "_single_statements", single)

    def snapshot(self) -> ObservedState:
        with read_only(self.engine) as conn:
            return snapshot(conn, self._snapshots)

    # nodes
    def register_node(self, name: str, facts: nodes.NodeFacts, **kwargs: Any) -> NodeStatus:
        with self.engine.begin() as conn:
            return nodes.register(conn, name, facts, now_ms=self.clock(), **kwargs)

    def approve_node(self, name: str) -> None:
        with self.engine.begin() as conn:
            nodes.approve(conn, name, now_ms=self.clock())

    def heartbeat(self, beats: Sequence[nodes.Heartbeat]) -> None:
        with self.engine.begin() as conn:
            nodes.heartbeat(conn, beats, now_ms=self.clock())

    def mark_unreachable(self, name: str, error: str) -> bool:
        with self.engine.begin() as conn:
            return nodes.mark_unreachable(conn, name, error, now_ms=self.clock())

    def clear_node_error(self, name: str) -> None:
        with self.engine.begin() as conn:
            nodes.clear_error(conn, name, now_ms=self.clock())

    def count_silent(self, *, silent_after_ms: int) -> tuple[int, int]:
        with read_only(self.engine) as conn:
            return nodes.count_silent(conn, now_ms=self.clock(), silent_after_ms=silent_after_ms)

    def mark_missed_heartbeats(self, *, unhealthy_after_ms: int, offline_after_ms: int) -> tuple[int, int]:
        with self.engine.begin() as conn:
            return nodes.mark_missed_heartbeats(
                conn, now_ms=self.clock(), unhealthy_after_ms=unhealthy_after_ms, offline_after_ms=offline_after_ms
            )

    def set_draining(self, name: str, draining: bool) -> None:
        with self.engine.begin() as conn:
            nodes.set_draining(conn, name, draining, now_ms=self.clock())

    def node_records(self) -> tuple[nodes.NodeRecord, ...]:
        with read_only(self.engine) as conn:
            return nodes.records(conn)

    def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        with self.engine.begin() as conn:
            nodes.set_manifest_labels(conn, name, labels)

    # admission: join tokens and node credentials (only their hashes are stored)
    def create_join_token(
        self, *, ttl_ms: int, uses: int, created_by: str | None = None
    ) -> join_tokens.IssuedToken:
        with self.engine.begin() as conn:
            return join_tokens.create(conn, now_ms=self.clock(), ttl_ms=ttl_ms, uses=uses, created_by=created_by)

    def consume_join_token(self, token: str) -> join_tokens.TokenVerdict:
        with self.engine.begin() as conn:
            return join_tokens.consume(conn, token, now_ms=self.clock())

    def list_join_tokens(self) -> tuple[join_tokens.JoinTokenInfo, ...]:
        with read_only(self.engine) as conn:
            return join_tokens.list_tokens(conn, self.clock())

    def revoke_join_token(self, token_id: str) -> bool:
        with self.engine.begin() as conn:
            return join_tokens.revoke(conn, token_id)

    def set_node_credential(self, name: str, credential_hash: str | None) -> None:
        with self.engine.begin() as conn:
            credentials.set_credential(conn, name, credential_hash)

    def node_credential_hash(self, name: str) -> str | None:
        with read_only(self.engine) as conn:
            return credentials.credential_hash(conn, name)

    def joined_nodes(self) -> tuple[tuple[str, str], ...]:
        with read_only(self.engine) as conn:
            return credentials.joined(conn)

    def node_credential_hashes(self) -> dict[str, str]:
        with read_only(self.engine) as conn:
            return credentials.credential_hashes(conn)

    # reservations
    def reserve(self, node: str, size: int, op_id: str, *, ttl_ms: int) -> reservations.Reservation | None:
        with self._single_statements.begin() as conn:
            return reservations.reserve(conn, node, size, op_id, ttl_ms=ttl_ms, now_ms=self.clock())

    def release(self, op_id: str, *, reason: str = "done") -> bool:
        with self._single_statements.begin() as conn:
            return reservations.release(conn, op_id, now_ms=self.clock(), reason=reason)

    def reclaim_expired(self) -> int:
        with self.engine.begin() as conn:
            return reservations.reclaim_expired(conn, now_ms=self.clock())

    # durable intent
    def record_intent(self, node: str, target: str, op: str, payload: Mapping[str, Any]) -> int:
        with self.engine.begin() as conn:
            return pending_ops.record(conn, node, target, op, payload, now_ms=self.clock())

    # replicas
    def replica_places(self, instance: str) -> tuple[replicas.ReplicaPlace, ...]:
        with read_only(self.engine) as conn:
            return replicas.places(conn, instance)

    def upsert_replica(self, record: replicas.ReplicaRecord) -> None:
        with self.engine.begin() as conn:
            replicas.upsert(conn, record, now_ms=self.clock())

    # leases
    def acquire_lease(self, name: str, holder: str, *, ttl_ms: int) -> int | None:
        with self.engine.begin() as conn:
            return leases.acquire(conn, name, holder, ttl_ms=ttl_ms, now_ms=self.clock())

    def renew_lease(self, name: str, holder: str, epoch: int, *, ttl_ms: int) -> bool:
        with self.engine.begin() as conn:
            return leases.renew(conn, name, holder, epoch, ttl_ms=ttl_ms, now_ms=self.clock())

    def release_lease(self, name: str, holder: str, epoch: int) -> bool:
        with self.engine.begin() as conn:
            return leases.release(conn, name, holder, epoch)

    def other_lease(self, name: str, holder: str) -> leases.LeaseInfo | None:
        """Someone else's unexpired lease ``name``, if any."""
        with read_only(self.engine) as conn:
            return leases.held_by_other(conn, name, holder, now_ms=self.clock())

    def lease_holder(self, name: str) -> str | None:
        """Who holds ``name`` now (an unexpired lease), read without taking it."""
        with read_only(self.engine) as conn:
            held = leases.held_by_other(conn, name, "", now_ms=self.clock())
        return held.holder if held is not None else None

    # apply log
    def record_apply(self, entry: apply_log.ApplyRecord, *, lease: str | None = None) -> int:
        with self.engine.begin() as conn:
            return apply_log.record(conn, entry, lease=lease)

    def ever_applied(self) -> bool:
        """Whether a controller (``fleetd apply`` or ``serve``) ever applied a plan here (an apply log row)."""
        with read_only(self.engine) as conn:
            return apply_log.any_recorded(conn)
