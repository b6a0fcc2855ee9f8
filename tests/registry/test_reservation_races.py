"""PostgreSQL-only races: two writers reserving the same new op id at the same moment.

SQLite cannot interleave them (``BEGIN IMMEDIATE`` serialises writers), so this runs on PostgreSQL alone.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

from fleetd.registry import nodes, reservations
from fleetd.registry.reservations import ReservationConflict

GIB = 1024**3
NOW = 1_795_420_800_000


def _wait_until(condition: object, deadline_s: float) -> bool:
    assert callable(condition)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising on time
    return False


def test_twin_op_id_on_another_node_conflicts_and_admits_nothing(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as conn:
        for name in ("a", "b"):
            nodes.register(conn, name, nodes.NodeFacts(total_vram=40 * GIB, available_vram=40 * GIB), now_ms=NOW)
    first = postgres_engine.connect()
    first.begin()
    assert reservations.reserve(first, "a", 10 * GIB, "load:x:0", ttl_ms=60_000, now_ms=NOW) is not None

    outcome: list[BaseException | object] = []

    def second_writer() -> None:
        try:
            with postgres_engine.begin() as conn:
                outcome.append(reservations.reserve(conn, "b", 10 * GIB, "load:x:0", ttl_ms=60_000, now_ms=NOW))
        except BaseException as exc:  # handed to the main thread for assertions
            outcome.append(exc)

    thread = threading.Thread(target=second_writer)
    thread.start()

    def second_is_waiting_on_a_lock() -> bool:
        with postgres_engine.connect() as probe:
            waiting = probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        return bool(waiting)

    assert _wait_until(second_is_waiting_on_a_lock, 20), "the second writer never blocked on the first"
    first.commit()
    first.close()
    thread.join(timeout=20)
    assert not thread.is_alive()
    [result] = outcome
    assert isinstance(result, ReservationConflict)
    with postgres_engine.connect() as conn:
        reserved: dict[str, int] = {
            row.name: row.reserved_vram for row in conn.execute(text("SELECT name, reserved_vram FROM nodes"))
        }
        assert reserved == {"a": 10 * GIB, "b": 0}
        assert reservations.open_reserved_by_node(conn) == {"a": 10 * GIB}


def test_reserving_an_open_op_id_again_is_idempotent_on_postgres(postgres_engine: Engine) -> None:
    size = 10 * GIB
    with postgres_engine.begin() as conn:
        nodes.register(conn, "a", nodes.NodeFacts(total_vram=40 * GIB, available_vram=40 * GIB), now_ms=NOW)
        first = reservations.reserve(conn, "a", size, "op", ttl_ms=1_000, now_ms=NOW)
        again = reservations.reserve(conn, "a", size, "op", ttl_ms=1_000, now_ms=NOW + 500)
    assert first is not None and again is not None
    assert again.expires_ms == NOW + 1_500  # renewed, not reserved twice
    with postgres_engine.connect() as conn:
        assert reservations.open_reserved_by_node(conn) == {"a": size}
