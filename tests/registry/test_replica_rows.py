"""Replica rows remember when their state last changed (``state_since_ms``), on SQLite and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, update

from fleetd.core.observed import ReplicaState
from fleetd.core.timestamps import iso_from_ms
from fleetd.registry import nodes, replicas
from fleetd.registry.engine import open_engine, read_only
from fleetd.registry.migrating import upgrade
from fleetd.registry.nodes import NodeFacts
from fleetd.registry.replicas import ReplicaRecord
from fleetd.registry.snapshots import snapshot
from fleetd.registry.tables import replicas as replicas_table
from tests.conftest import Database, ManualClock
from tests.registry.test_migrations import downgrade

GIB = 1024**3


@pytest.fixture
def empty_engine(empty_database: Database) -> Iterator[Engine]:
    engine = open_engine(empty_database.url)
    yield engine
    engine.dispose()


@pytest.fixture
def node(engine: Engine, clock: ManualClock) -> str:
    with engine.begin() as conn:
        nodes.register(conn, "gpu-a", NodeFacts(total_vram=24 * GIB), now_ms=clock())
    return "gpu-a"


def report(
    engine: Engine, clock: ManualClock, state: ReplicaState, *, restarts: int = 0, in_flight: int = 0
) -> None:
    """What an agent's report writes for replica chat/gpu-a/0."""
    record = ReplicaRecord("chat", "gpu-a", 0, state, restarts=restarts, in_flight=in_flight)
    with engine.begin() as conn:
        replicas.upsert(conn, record, now_ms=clock())


def since(engine: Engine) -> int | None:
    with engine.connect() as conn:
        found: int | None = conn.execute(select(replicas_table.c.state_since_ms)).scalar_one()
    return found


def test_a_new_row_is_in_its_state_since_now(engine: Engine, clock: ManualClock, node: str) -> None:
    report(engine, clock, ReplicaState.STARTING)
    assert since(engine) == clock()


def test_a_report_in_the_same_state_keeps_the_time(engine: Engine, clock: ManualClock, node: str) -> None:
    report(engine, clock, ReplicaState.FAILED, restarts=5)
    failed_at = clock()
    clock.advance(60_000)
    report(engine, clock, ReplicaState.FAILED, restarts=5, in_flight=2)
    assert since(engine) == failed_at


def test_a_change_of_state_restarts_the_time_by_report_and_by_set_state(
    engine: Engine, clock: ManualClock, node: str
) -> None:
    report(engine, clock, ReplicaState.STARTING)
    clock.advance(5_000)
    report(engine, clock, ReplicaState.RUNNING)
    assert since(engine) == clock()
    clock.advance(7_000)
    with engine.begin() as conn:
        assert replicas.set_state(conn, "chat", "gpu-a", 0, ReplicaState.STOPPING, now_ms=clock())
    assert since(engine) == clock()
    stopping_at = clock()
    clock.advance(1_000)
    with engine.begin() as conn:  # the same state again: the time is kept
        assert replicas.set_state(conn, "chat", "gpu-a", 0, ReplicaState.STOPPING, now_ms=clock())
    assert since(engine) == stopping_at


def test_a_row_from_before_the_column_learns_it_on_its_next_write(
    engine: Engine, clock: ManualClock, node: str
) -> None:
    report(engine, clock, ReplicaState.FAILED)
    with engine.begin() as conn:  # as the migration leaves a row written by an older fleetd
        conn.execute(update(replicas_table).values(state_since_ms=None))
    clock.advance(30_000)
    report(engine, clock, ReplicaState.FAILED)
    assert since(engine) == clock()  # unknown becomes "since now": it waits one cooldown from here


def test_the_snapshot_shows_it_in_iso_8601(engine: Engine, clock: ManualClock, node: str) -> None:
    report(engine, clock, ReplicaState.FAILED)
    failed_at = clock()
    clock.advance(90_000)
    report(engine, clock, ReplicaState.FAILED)
    with read_only(engine) as conn:
        (replica,) = snapshot(conn).replicas
    assert replica.state_since == iso_from_ms(failed_at)


def test_the_migration_keeps_rows_and_leaves_their_time_unknown(empty_engine: Engine, clock: ManualClock) -> None:
    upgrade(empty_engine, "0003")
    with empty_engine.begin() as conn:
        nodes.register(conn, "gpu-a", NodeFacts(total_vram=24 * GIB), now_ms=clock())
        conn.execute(
            replicas_table.insert().values(
                instance="chat", node="gpu-a", replica=0, state="failed", updated_ms=clock()
            )
        )
    assert upgrade(empty_engine) == "0009"
    with read_only(empty_engine) as conn:
        (replica,) = snapshot(conn).replicas
    assert (replica.state, replica.state_since) == (ReplicaState.FAILED, None)
    downgrade(empty_engine, "0003")
    with empty_engine.connect() as conn:
        assert conn.execute(select(replicas_table.c.instance)).scalars().all() == ["chat"]


def test_places_name_each_replicas_node_and_its_agents_address(engine: Engine, clock: ManualClock) -> None:
    """What ``fleetd logs`` reads: a node without an address is a controller machine's in-process agent."""
    with engine.begin() as conn:
        nodes.register(conn, "local", NodeFacts(), now_ms=clock())
        nodes.register(conn, "gpu-a", NodeFacts(), now_ms=clock(), address="10.0.0.5:7443")
        for node, index in (("gpu-a", 1), ("local", 0), ("gpu-a", 0)):
            replicas.upsert(conn, ReplicaRecord("chat", node, index, ReplicaState.RUNNING), now_ms=clock())
        replicas.upsert(conn, ReplicaRecord("other", "local", 0, ReplicaState.RUNNING), now_ms=clock())
    with read_only(engine) as conn:
        assert replicas.places(conn, "chat") == (
            replicas.ReplicaPlace("chat", 0, "gpu-a", "10.0.0.5:7443"),
            replicas.ReplicaPlace("chat", 0, "local", None),
            replicas.ReplicaPlace("chat", 1, "gpu-a", "10.0.0.5:7443"),
        )
        assert replicas.places(conn, "nope") == ()
