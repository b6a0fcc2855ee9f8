"""Leases with fencing epochs: one holder at a time, takeover after expiry, and a deposed holder cannot write."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from fleetd.core.desired import InstanceSpec
from fleetd.registry import apply_log, instances, leases
from fleetd.registry.apply_log import ApplyRecord
from fleetd.registry.facade import Registry
from fleetd.registry.leases import FencedOut, LeaseInfo
from fleetd.registry.tables import apply_log as apply_log_table
from tests.conftest import ManualClock

LEASE = instances.CONTROLLER_LEASE
TTL_MS = 15_000


def spec(name: str, model: str = "org/model-GGUF") -> InstanceSpec:
    return InstanceSpec(name=name, backend="llama", model=model)


def entry(who: str, epoch: int, clock: ManualClock) -> ApplyRecord:
    return ApplyRecord(
        manifest_digest="sha256:m",
        plan_hash="sha256:p",
        actions=[{"id": "load:chat:gpu-a:0", "kind": "load", "outcome": "ok"}],
        outcome="ok",
        who=who,
        started_ms=clock(),
        finished_ms=clock(),
        lease_epoch=epoch,
    )


def applied_models(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {name: row["model"] for name, row in instances.applied(conn).items()}


def log_count(engine: Engine) -> int:
    with engine.connect() as conn:
        count: int = conn.execute(select(func.count()).select_from(apply_log_table)).scalar_one()
        return count


def test_a_deposed_holder_is_fenced_out_and_changes_nothing(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    assert registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS) == 1
    with engine.begin() as conn:
        instances.sync(conn, [spec("chat")], {"chat": "h1"}, revision="r1", now_ms=clock(), epoch=1)
    registry.record_apply(entry("controller-a", 1, clock), lease=LEASE)
    assert registry.acquire_lease(LEASE, "controller-b", ttl_ms=TTL_MS) is None  # A still holds it

    clock.advance(TTL_MS)  # A stalls past its TTL (a GC pause, a partition) ...
    assert registry.acquire_lease(LEASE, "controller-b", ttl_ms=TTL_MS) == 2  # ... and B takes over

    # A wakes up and carries on with its old epoch
    stale = r"epoch 1 is stale \(epoch 2 held by 'controller-b'\)"
    hashes = {"chat": "h2", "code": "h3"}
    specs = [spec("chat", "org/other-GGUF"), spec("code")]
    with pytest.raises(FencedOut, match=stale), engine.begin() as conn:
        instances.sync(conn, specs, hashes, revision="r2", now_ms=clock(), epoch=1)
    with pytest.raises(FencedOut, match=stale), engine.begin() as conn:
        instances.sync(conn, [], {}, revision="r2", now_ms=clock(), epoch=1)
    with pytest.raises(FencedOut):
        registry.record_apply(entry("controller-a", 1, clock), lease=LEASE)
    assert applied_models(engine) == {"chat": "org/model-GGUF"}
    assert log_count(engine) == 1
    assert registry.renew_lease(LEASE, "controller-a", 1, ttl_ms=TTL_MS) is False
    assert registry.release_lease(LEASE, "controller-a", 1) is False  # cannot drop B's lease either

    # B's writes go through
    with engine.begin() as conn:
        instances.sync(conn, [spec("code")], {"code": "h3"}, revision="r2", now_ms=clock(), epoch=2)
    assert registry.record_apply(entry("controller-b", 2, clock), lease=LEASE) > 0
    assert applied_models(engine) == {"code": "org/model-GGUF"}
    with engine.connect() as conn:
        assert [r.lease_epoch for r in apply_log.recent(conn)] == [2, 1]
        assert leases.current(conn, LEASE) == LeaseInfo(LEASE, "controller-b", 2, clock() + TTL_MS)


def test_fence_without_a_lease_row_refuses(engine: Engine) -> None:
    with pytest.raises(FencedOut, match="no lease"), engine.begin() as conn:
        leases.fence(conn, LEASE, 1)


def test_renewal_keeps_the_lease_and_an_expired_one_cannot_be_renewed(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    epoch = registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS)
    assert epoch == 1
    clock.advance(TTL_MS - 1)
    assert registry.renew_lease(LEASE, "controller-a", epoch, ttl_ms=TTL_MS) is True
    clock.advance(TTL_MS - 1)
    assert registry.acquire_lease(LEASE, "controller-b", ttl_ms=TTL_MS) is None  # the renewal counted
    assert registry.renew_lease(LEASE, "controller-b", epoch, ttl_ms=TTL_MS) is False  # not B's to renew
    clock.advance(1)
    assert registry.renew_lease(LEASE, "controller-a", epoch, ttl_ms=TTL_MS) is False  # expired


def test_release_hands_over_at_once_with_the_next_epoch(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    assert registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS) == 1
    assert registry.release_lease(LEASE, "controller-a", 1) is True
    assert registry.acquire_lease(LEASE, "controller-b", ttl_ms=TTL_MS) == 2  # no waiting for the TTL
    assert registry.release_lease(LEASE, "controller-b", 2) is True
    assert registry.acquire_lease(LEASE, "controller-b", ttl_ms=TTL_MS) == 3  # a new tenure, a new epoch


def test_the_holder_re_acquiring_an_unexpired_lease_keeps_its_epoch(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    assert registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS) == 1
    clock.advance(TTL_MS - 1)
    assert registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS) == 1
    with engine.connect() as conn:
        assert leases.current(conn, LEASE) == LeaseInfo(LEASE, "controller-a", 1, clock() + TTL_MS)
        assert leases.held_by_other(conn, LEASE, "controller-b", now_ms=clock()) == LeaseInfo(
            LEASE, "controller-a", 1, clock() + TTL_MS
        )
        assert leases.held_by_other(conn, LEASE, "controller-a", now_ms=clock()) is None
    clock.advance(TTL_MS)
    assert registry.acquire_lease(LEASE, "controller-a", ttl_ms=TTL_MS) == 2  # lapsed: a new tenure
    with engine.connect() as conn:
        assert leases.held_by_other(conn, LEASE, "controller-b", now_ms=clock() + TTL_MS) is None


def test_leases_are_independent_by_name(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    assert registry.acquire_lease("controller", "controller-a", ttl_ms=TTL_MS) == 1
    assert registry.acquire_lease("apply", "controller-b", ttl_ms=TTL_MS) == 1
    with engine.connect() as conn:
        assert leases.current(conn, "nope") is None
        assert leases.current(conn, "controller") == LeaseInfo("controller", "controller-a", 1, clock() + TTL_MS)
        assert leases.current(conn, "apply") == LeaseInfo("apply", "controller-b", 1, clock() + TTL_MS)
