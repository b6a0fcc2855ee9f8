"""The applied instances (secrets stored as references, removed instances deleted) and the apply log."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select, text

from fleetd.core.desired import (
    EnvValue,
    HealthPolicy,
    InstanceSpec,
    Placement,
    RestartPolicy,
    RolloutPolicy,
    RoutePolicy,
    Scheduling,
)
from fleetd.registry import apply_log, instances
from fleetd.registry.apply_log import ApplyRecord
from fleetd.registry.tables import instances as instances_table
from tests.conftest import ManualClock

GIB = 1024**3
SECRET = "hf_live_6b1d0c2e9f"


def chat(model: str = "org/chat-GGUF", *, environment: tuple[tuple[str, EnvValue], ...] = ()) -> InstanceSpec:
    return InstanceSpec(
        name="chat",
        backend="llama",
        model=model,
        options=(("ctx_size", 8192), ("flash_attn", True)),
        vram_bytes=6 * GIB,
        scheduling=Scheduling(
            min_replicas=1,
            max_replicas=3,
            node_selector=(("gpu.vendor", "nvidia"),),
            nodes=("gpu-a", "gpu-b"),
            priority=5,
            route_policy=RoutePolicy.PREFIX_CACHE,
        ),
        restart=RestartPolicy(max_restarts=10),
        health=HealthPolicy(interval_ms=5_000),
        placement=Placement.SPREAD,
        rollout=RolloutPolicy(max_unavailable=1, max_surge=0),
        on_demand_start=True,
        idle_timeout_ms=600_000,
        command_override=("llama-server", "--port", "{port}"),
        environment=environment,
    )


def test_sync_stores_secret_references_never_their_values(
    engine: Engine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    environment = (
        ("HF_TOKEN", EnvValue("${env:HF_TOKEN}", secret=True)),
        ("LOG_LEVEL", EnvValue("debug")),
    )
    with engine.begin() as conn:
        instances.sync(conn, [chat(environment=environment)], {"chat": "sha256:c1"}, revision="r1", now_ms=clock())
    with engine.connect() as conn:
        stored = conn.execute(select(instances_table.c.environment)).scalar_one()
        # the raw row as the database holds it, every column cast to text
        raw = conn.execute(text("SELECT * FROM instances")).one()
    assert stored == {"HF_TOKEN": "${env:HF_TOKEN}", "LOG_LEVEL": "debug"}
    assert SECRET not in repr(tuple(raw))
    assert "${env:HF_TOKEN}" in repr(tuple(raw))


def test_sync_writes_every_field_and_makes_the_table_exactly_the_specs(engine: Engine, clock: ManualClock) -> None:
    other = InstanceSpec(name="embed", backend="vllm", model="org/embed")
    with engine.begin() as conn:
        instances.sync(
            conn, [chat(), other], {"chat": "sha256:c1", "embed": "sha256:e1"}, revision="r1", now_ms=clock()
        )
    created = clock()
    clock.advance(1_000)
    with engine.begin() as conn:
        instances.sync(conn, [chat("org/chat-v2-GGUF")], {"chat": "sha256:c2"}, revision="r2", now_ms=clock())
        rows = instances.applied(conn)
    assert list(rows) == ["chat"]
    row = rows["chat"]
    assert row == {
        "name": "chat",
        "backend": "llama",
        "model": "org/chat-v2-GGUF",
        "options": {"ctx_size": 8192, "flash_attn": True},
        "vram_bytes": 6 * GIB,
        "min_replicas": 1,
        "max_replicas": 3,
        "node_selector": {"gpu.vendor": "nvidia"},
        "allowed_nodes": ["gpu-a", "gpu-b"],
        "priority": 5,
        "route_policy": "prefix_cache",
        "placement": "spread",
        "auto_restart": True,
        "max_restarts": 10,
        "restart_delay_ms": 5_000,
        "restart_max_delay_ms": 300_000,
        "health": {
            "interval_ms": 5_000,
            "timeout_ms": 5_000,
            "startup_timeout_ms": 600_000,
            "failure_threshold": 3,
        },
        "rollout": {"max_unavailable": 1, "max_surge": 0},
        "on_demand_start": True,
        "idle_timeout_ms": 600_000,
        "docker_enabled": False,
        "command_override": ["llama-server", "--port", "{port}"],
        "environment": {},
        "config_hash": "sha256:c2",
        "applied_revision": "r2",
        "created_ms": created,
        "updated_ms": clock(),
    }
    with engine.begin() as conn:
        instances.sync(conn, [], {}, revision="r3", now_ms=clock())
        assert instances.applied(conn) == {}


def test_apply_log_keeps_every_apply_newest_first(engine: Engine, clock: ManualClock) -> None:
    actions = [
        {"id": "install:llama:gpu-a", "kind": "install_backend", "outcome": "ok"},
        {"id": "load:chat:gpu-a:0", "kind": "load", "outcome": "failed: out of memory"},
    ]
    with engine.begin() as conn:
        first = apply_log.record(
            conn,
            ApplyRecord(
                "sha256:m1", "sha256:p1", actions, "failed", "alice@laptop", clock(), clock() + 5_000, "r1"
            ),
        )
        clock.advance(60_000)
        second = apply_log.record(
            conn, ApplyRecord("sha256:m2", "sha256:p2", [], "ok", "ci", clock(), clock() + 10), lease="controller"
        )  # no epoch, so nothing to fence
    assert second > first
    with engine.connect() as conn:
        newest, oldest = apply_log.recent(conn)
        assert [r.plan_hash for r in apply_log.recent(conn, limit=1)] == ["sha256:p2"]
    assert (newest.manifest_revision, newest.outcome, newest.who, newest.actions) == (None, "ok", "ci", [])
    assert oldest == ApplyRecord(
        "sha256:m1", "sha256:p1", actions, "failed", "alice@laptop", clock() - 60_000, clock() - 55_000, "r1", None
    )
