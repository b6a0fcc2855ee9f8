"""Join tokens and node credentials: shown once, stored as hashes, consumed atomically, on both databases."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select, text

from fleetd.registry import join_tokens
from fleetd.registry.credentials import secret_hash
from fleetd.registry.engine import open_engine
from fleetd.registry.facade import Registry
from fleetd.registry.join_tokens import TokenVerdict
from fleetd.registry.nodes import NodeFacts, UnknownNode
from fleetd.registry.tables import join_tokens as join_tokens_table
from fleetd.registry.tables import nodes as nodes_table
from tests.conftest import Database, ManualClock

HOUR_MS = 3_600_000


def wait_until(condition: Callable[[], bool], deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)  # polling a condition with a deadline, not synchronising on time
    return False


def test_a_token_is_shown_once_and_admits_as_many_registrations_as_it_has_uses(
    engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    issued = registry.create_join_token(ttl_ms=HOUR_MS, uses=2, created_by="alice@ops")
    assert re.fullmatch(r"fjt_[A-Za-z0-9_-]{43}", issued.token)
    assert re.fullmatch(r"jt-[0-9a-f]{8}", issued.id)
    assert (issued.expires_ms, issued.uses) == (clock() + HOUR_MS, 2)
    assert issued.token not in repr(issued) and issued.token not in str(issued)
    assert registry.consume_join_token(issued.token) is TokenVerdict.ACCEPTED
    assert registry.consume_join_token(issued.token) is TokenVerdict.ACCEPTED
    assert registry.consume_join_token(issued.token) is TokenVerdict.USED_UP
    assert registry.create_join_token(ttl_ms=HOUR_MS, uses=1).token != issued.token


def test_only_the_hash_is_stored(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    issued = registry.create_join_token(ttl_ms=HOUR_MS, uses=1)
    registry.consume_join_token(issued.token)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(join_tokens_table))]
        dump = conn.execute(text("SELECT * FROM join_tokens")).all()
    assert rows == [
        {
            "id": issued.id,
            "token_hash": hashlib.sha256(issued.token.encode()).hexdigest(),
            "created_ms": clock(),
            "expires_ms": clock() + HOUR_MS,
            "uses_left": 0,
            "created_by": None,
        }
    ]
    secret = issued.token.removeprefix("fjt_")
    assert not any(secret in str(value) for row in dump for value in row)


def test_a_token_expires_at_its_expiry(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    issued = registry.create_join_token(ttl_ms=HOUR_MS, uses=5)
    clock.advance(HOUR_MS - 1)
    assert registry.consume_join_token(issued.token) is TokenVerdict.ACCEPTED
    clock.advance(1)
    assert registry.consume_join_token(issued.token) is TokenVerdict.EXPIRED
    with engine.connect() as conn:  # a refused token is not decremented
        assert conn.execute(select(join_tokens_table.c.uses_left)).scalar_one() == 4


def test_unknown_and_revoked_tokens_are_unknown(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    issued = registry.create_join_token(ttl_ms=HOUR_MS, uses=1)
    assert registry.consume_join_token("fjt_" + "A" * 43) is TokenVerdict.UNKNOWN
    assert registry.consume_join_token("") is TokenVerdict.UNKNOWN
    assert registry.consume_join_token(issued.token + "x") is TokenVerdict.UNKNOWN
    assert registry.revoke_join_token(issued.id) is True
    assert registry.revoke_join_token(issued.id) is False
    assert registry.consume_join_token(issued.token) is TokenVerdict.UNKNOWN


def test_listing_shows_ids_expiry_and_uses_but_no_hash(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    first = registry.create_join_token(ttl_ms=HOUR_MS, uses=1, created_by="alice@ops")
    clock.advance(1_000)
    second = registry.create_join_token(ttl_ms=2 * HOUR_MS, uses=3)
    registry.consume_join_token(second.token)
    clock.advance(HOUR_MS)
    listed = registry.list_join_tokens()
    assert [(t.id, t.uses_left, t.expired, t.created_by) for t in listed] == [
        (first.id, 1, True, "alice@ops"),
        (second.id, 2, False, None),
    ]
    assert listed[1].expires_ms == second.expires_ms
    assert not hasattr(listed[0], "token_hash")


def test_a_taken_id_is_drawn_again(engine: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are 32 random bits: a clash is rare, and then another id is drawn (randomness replaced here)."""
    draws = iter(["0badc0de", "0badc0de", "0badc0de", "feedf00d"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(draws))
    registry = Registry(engine, clock)
    first = registry.create_join_token(ttl_ms=HOUR_MS, uses=1)
    second = registry.create_join_token(ttl_ms=HOUR_MS, uses=1)
    assert (first.id, second.id) == ("jt-0badc0de", "jt-feedf00d")
    assert registry.consume_join_token(second.token) is TokenVerdict.ACCEPTED


def test_a_token_needs_a_lifetime_and_a_use(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    with pytest.raises(ValueError, match="positive lifetime"):
        registry.create_join_token(ttl_ms=0, uses=1)
    with pytest.raises(ValueError, match="at least one use"):
        registry.create_join_token(ttl_ms=HOUR_MS, uses=0)
    assert registry.list_join_tokens() == ()


def race(database: Database, contenders: int, attempt: Callable[[Engine], TokenVerdict]) -> Counter[TokenVerdict]:
    """``contenders`` threads, each with its own engine, released together by a barrier."""
    engines = [open_engine(database.url) for _ in range(contenders)]
    barrier = threading.Barrier(contenders)
    verdicts: list[TokenVerdict | BaseException] = []

    def contend(engine: Engine) -> None:
        try:
            barrier.wait(timeout=30)
            verdicts.append(attempt(engine))
        except BaseException as exc:  # handed to the main thread for the assertion
            verdicts.append(exc)

    threads = [threading.Thread(target=contend, args=(e,)) for e in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for engine in engines:
            engine.dispose()
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(v, TokenVerdict) for v in verdicts), verdicts
    return Counter(v for v in verdicts if isinstance(v, TokenVerdict))


def test_racing_for_a_single_use_token_admits_exactly_one(
    database: Database, engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    for _ in range(10):
        issued = registry.create_join_token(ttl_ms=HOUR_MS, uses=1)

        def consume(own: Engine, token: str = issued.token) -> TokenVerdict:
            with own.begin() as conn:
                return join_tokens.consume(conn, token, now_ms=clock())

        assert race(database, 4, consume) == Counter({TokenVerdict.ACCEPTED: 1, TokenVerdict.USED_UP: 3})


def test_a_consumer_blocked_behind_the_last_use_finds_it_used_up_on_postgres(
    postgres_engine: Engine, clock: ManualClock
) -> None:
    issued = Registry(postgres_engine, clock).create_join_token(ttl_ms=HOUR_MS, uses=1)
    first = postgres_engine.connect()
    first.begin()
    assert join_tokens.consume(first, issued.token, now_ms=clock()) is TokenVerdict.ACCEPTED
    outcome: list[TokenVerdict | BaseException] = []

    def second() -> None:
        try:
            with postgres_engine.begin() as conn:
                outcome.append(join_tokens.consume(conn, issued.token, now_ms=clock()))
        except BaseException as exc:  # handed to the main thread for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=second)
    thread.start()

    def second_waits_on_the_row() -> bool:
        with postgres_engine.connect() as probe:
            return bool(
                probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar_one()
            )

    assert wait_until(second_waits_on_the_row, 20), "the second consumer never blocked on the first"
    first.commit()
    first.close()
    thread.join(timeout=20)
    assert outcome == [TokenVerdict.USED_UP]


def test_node_credentials_are_stored_as_hashes(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    registry.register_node("gpu-a", NodeFacts())
    assert registry.node_credential_hash("gpu-a") is None
    assert registry.node_credential_hash("gpu-nope") is None
    credential = "fnc_" + "s3cret" * 8
    with pytest.raises(ValueError, match="SHA-256 hex digest"):
        registry.set_node_credential("gpu-a", credential)
    registry.set_node_credential("gpu-a", secret_hash(credential))
    assert registry.node_credential_hash("gpu-a") == hashlib.sha256(credential.encode()).hexdigest()
    with engine.connect() as conn:
        row = conn.execute(select(nodes_table).where(nodes_table.c.name == "gpu-a")).one()
    assert credential not in repr(tuple(row))
    with pytest.raises(UnknownNode):
        registry.set_node_credential("gpu-nope", secret_hash(credential))
    registry.set_node_credential("gpu-a", None)
    assert registry.node_credential_hash("gpu-a") is None
