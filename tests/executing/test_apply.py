"""``apply_plan`` against a real registry (SQLite and PostgreSQL) and fake agents, with plans from the planner."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import Engine, select

from fleetd.core.observed import NodeStatus, ReplicaState
from fleetd.executing import ActionOutcome, Fence, PlanMismatch
from fleetd.planning.plans import RestartDetails
from fleetd.registry import apply_log, replicas
from fleetd.registry.nodes import Heartbeat
from fleetd.registry.pending_ops import OpState
from fleetd.registry.tables import node_backends
from tests.conftest import ManualClock
from tests.executing.fleet import GIB, Background, Fleet, hash_of, instance, manifest

PINNED = (
    "instances:\n" + instance("qwen", scheduling="nodes: [gpu-a]") + instance("llama", scheduling="nodes: [gpu-b]")
)
DRAIN_A = "nodes:\n  gpu-a: {drain: true, max_replicas_per_model: 2}\n  gpu-b: {max_replicas_per_model: 2}\n"


def two_nodes(engine: Engine, clock: ManualClock) -> Fleet:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")
    fleet.node("gpu-b")
    return fleet


def drained_fleet(engine: Engine, clock: ManualClock) -> Fleet:
    """qwen/0 runs on gpu-a; gpu-b has just joined; the next manifest drains gpu-a."""
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")
    desired = manifest("instances:\n" + instance("qwen"))
    assert fleet.apply(fleet.plan(desired), desired).ok()
    fleet.node("gpu-b")
    return fleet


def statuses(outcomes: tuple[ActionOutcome, ...]) -> list[tuple[str, str]]:
    return [(o.action_id, o.status) for o in outcomes]


def test_loads_on_two_nodes_run_and_the_snapshot_shows_them_running(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    assert [a.id for a in result.actions] == ["load:llama:gpu-b:0", "load:qwen:gpu-a:0"]
    events: list[ActionOutcome] = []
    report = fleet.apply(result, desired, on_event=events.append)
    assert statuses(report.outcomes) == [("load:llama:gpu-b:0", "ok"), ("load:qwen:gpu-a:0", "ok")]
    assert sorted(events, key=lambda e: e.action_id) == list(report.outcomes)
    assert [o.replica_state for o in report.outcomes] == ["running", "running"]
    assert report.plan_hash == result.hash
    assert report.exit_code(result) == 0
    observed = fleet.registry.snapshot()
    assert [
        (r.instance, r.node, r.replica, r.state, r.config_hash, r.address, r.vram_bytes) for r in observed.replicas
    ] == [
        (
            "llama",
            "gpu-b",
            0,
            ReplicaState.RUNNING,
            hash_of(desired, "llama"),
            fleet.agent("gpu-b").replicas[("llama", 0)].address,
            6 * GIB,
        ),
        (
            "qwen",
            "gpu-a",
            0,
            ReplicaState.RUNNING,
            hash_of(desired, "qwen"),
            fleet.agent("gpu-a").replicas[("qwen", 0)].address,
            6 * GIB,
        ),
    ]
    assert [n.reserved_vram for n in observed.nodes] == [0, 0]
    assert fleet.open_reservations() == []
    assert {k: (op.state, op.payload["action"]) for k, op in fleet.ops().items()} == {
        "gpu-a/qwen/0/load": (OpState.DONE, "load:qwen:gpu-a:0"),
        "gpu-b/llama/0/load": (OpState.DONE, "load:llama:gpu-b:0"),
    }
    assert fleet.plan(desired).is_empty


def test_the_apply_is_written_to_the_apply_log(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    fleet.apply(result, desired)
    with engine.connect() as conn:
        [entry] = apply_log.recent(conn)
    assert (entry.plan_hash, entry.manifest_digest, entry.outcome, entry.who) == (
        result.hash,
        desired.digest,
        "ok",
        "fleetd",
    )
    assert (entry.started_ms, entry.finished_ms) == (clock(), clock())
    assert [(a["id"], a["kind"], a["node"], a["outcome"]) for a in entry.actions] == [
        ("load:llama:gpu-b:0", "load", "gpu-b", "ok"),
        ("load:qwen:gpu-a:0", "load", "gpu-a", "ok"),
    ]


def test_an_unload_that_depends_on_a_load_runs_after_it(engine: Engine, clock: ManualClock) -> None:
    fleet = drained_fleet(engine, clock)
    desired = manifest(DRAIN_A + "instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    assert [(a.id, a.depends_on) for a in result.actions] == [
        ("drain_node:gpu-a", ()),
        ("load:qwen:gpu-b:1", ()),
        ("unload:qwen:gpu-a:0", ("load:qwen:gpu-b:1",)),
    ]
    release = fleet.agent("gpu-b").hold("load")
    running = Background(lambda: fleet.apply(result, desired))
    assert fleet.log.wait_for_active({"gpu-b": 1})
    release.set()
    report = running.join()
    assert report.ok()
    assert fleet.log.find("load", "qwen/1").ended < fleet.log.find("unload", "qwen/0").started
    observed = fleet.registry.snapshot()
    assert [(r.node, r.replica, r.state) for r in observed.replicas] == [("gpu-b", 1, ReplicaState.RUNNING)]
    assert observed.nodes_by_name["gpu-a"].status is NodeStatus.DRAINING
    assert fleet.agent("gpu-a").replicas == {}
    assert fleet.plan(desired).is_empty


def test_a_failed_load_skips_its_dependents_and_ends_its_reservation_and_intent(
    engine: Engine, clock: ManualClock
) -> None:
    fleet = drained_fleet(engine, clock)
    desired = manifest(DRAIN_A + "instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    fleet.agent("gpu-b").fail("load", "qwen/1", "CUDA error: out of memory")
    report = fleet.apply(result, desired)
    assert [(o.action_id, o.status, o.message) for o in report.outcomes] == [
        ("drain_node:gpu-a", "ok", "draining"),
        ("load:qwen:gpu-b:1", "failed", "CUDA error: out of memory"),
        ("unload:qwen:gpu-a:0", "skipped", "depends on load:qwen:gpu-b:1 which failed"),
    ]
    assert not report.ok()
    assert [o.action_id for o in report.failed()] == ["load:qwen:gpu-b:1"]
    assert report.exit_code(result) == 1
    assert fleet.open_reservations() == []
    [(op_id, node, size, reason)] = [row for row in fleet.reservation_ledger() if row[1] == "gpu-b"]
    assert (op_id.startswith("load:qwen:gpu-b:1#"), node, size, reason) == (True, "gpu-b", 6 * GIB, "failed")
    op = fleet.ops()["gpu-b/qwen/1/load"]
    assert (op.state, op.attempts, op.last_error) == (OpState.PENDING, 1, "CUDA error: out of memory")
    assert op.payload["reservation"] == op_id
    observed = fleet.registry.snapshot()
    assert [(r.node, r.replica, r.state, r.last_error) for r in observed.replicas] == [
        ("gpu-a", 0, ReplicaState.RUNNING, None),
        ("gpu-b", 1, ReplicaState.FAILED, "CUDA error: out of memory"),
    ]
    assert [n.reserved_vram for n in observed.nodes] == [0, 0]
    assert fleet.log.of("unload") == []
    with engine.connect() as conn:
        [entry] = apply_log.recent(conn, limit=1)
    assert entry.outcome == "failed"
    assert [a["outcome"] for a in entry.actions] == [
        "ok",
        "failed: CUDA error: out of memory",
        "skipped: depends on load:qwen:gpu-b:1 which failed",
    ]


def test_at_most_per_node_limit_actions_run_at_once_on_a_node(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    names = {"gpu-a": ["a1", "a2", "a3"], "gpu-b": ["b1", "b2", "b3"]}
    desired = manifest(
        "instances:\n"
        + "".join(instance(n, scheduling=f"nodes: [{node}]") for node, ns in names.items() for n in ns)
    )
    result = fleet.plan(desired)
    assert len(result.actions) == 6
    releases = [fleet.agent(node).hold("load") for node in names]
    running = Background(lambda: fleet.apply(result, desired, per_node_limit=2))
    assert fleet.log.wait_for_active({"gpu-a": 2, "gpu-b": 2})
    for release in releases:
        release.set()
    report = running.join()
    assert report.ok()
    assert dict(fleet.log.max_active) == {"gpu-a": 2, "gpu-b": 2}
    assert len(fleet.log.of("load")) == 6


def test_a_load_whose_reservation_cannot_be_made_fails_and_calls_no_agent(
    engine: Engine, clock: ManualClock
) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", vram_gib=8)
    desired = manifest("instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    fleet.registry.heartbeat([Heartbeat("gpu-a", available_vram=2 * GIB, available_ram=0)])  # someone else's
    report = fleet.apply(result, desired)
    [outcome] = report.outcomes
    expected = (
        f"node gpu-a has not enough free VRAM now ({6 * GIB} bytes needed): the plan was made on older readings; "
        "plan again"
    )
    assert (outcome.status, outcome.message) == ("failed", expected)
    assert fleet.log.of() == []
    assert fleet.registry.snapshot().replicas == ()
    assert fleet.reservation_ledger() == []
    op = fleet.ops()["gpu-a/qwen/0/load"]
    assert (op.attempts, op.last_error) == (1, expected)


def test_unloading_a_replica_the_agent_does_not_know_succeeds(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")
    fleet.registry.upsert_replica(replicas.ReplicaRecord("old", "gpu-a", 0, ReplicaState.RUNNING, vram_bytes=GIB))
    desired = manifest("instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    assert [a.id for a in result.actions] == ["load:qwen:gpu-a:0", "unload:old:gpu-a:0"]
    report = fleet.apply(result, desired)
    assert [(o.action_id, o.status, o.message) for o in report.outcomes][1] == (
        "unload:old:gpu-a:0",
        "ok",
        "was not running on the node; nothing to stop",
    )
    assert [r.instance for r in fleet.registry.snapshot().replicas] == ["qwen"]
    assert fleet.ops()["gpu-a/old/0/unload"].state is OpState.DONE
    assert fleet.log.find("unload", "old/0").node == "gpu-a"


def test_reapplying_a_plan_that_succeeded_changes_nothing(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    first = fleet.apply(result, desired)
    before = fleet.registry.snapshot()
    clock.advance(1_000)
    again = fleet.apply(result, desired)
    assert statuses(again.outcomes) == statuses(first.outcomes)
    assert [o.replica_state for o in again.outcomes] == ["running", "running"]
    assert (fleet.agent("gpu-a").starts, fleet.agent("gpu-b").starts) == (1, 1)
    assert len(fleet.log.of("load")) == 4
    # The same rows; only when their state last changed moved: a load writes its row 'starting' first.
    after = fleet.registry.snapshot()
    assert [dataclasses.replace(r, state_since=None) for r in after.replicas] == [
        dataclasses.replace(r, state_since=None) for r in before.replicas
    ]
    assert dataclasses.replace(after, replicas=()) == dataclasses.replace(before, replicas=())
    assert fleet.open_reservations() == []
    assert [reason for *_, reason in fleet.reservation_ledger()] == ["done"] * 4
    assert {op.state for op in fleet.ops().values()} == {OpState.DONE}


def test_a_plan_that_does_not_match_the_desired_state_changes_nothing(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    other = manifest("instances:\n" + instance("llama", scheduling="nodes: [gpu-b]"))
    before = fleet.registry.snapshot()
    with pytest.raises(PlanMismatch) as raised:
        fleet.apply(result, other)
    assert "load:qwen:gpu-a:0: instance qwen is not in the desired state" in raised.value.problems
    assert raised.value.problems[0].startswith("the plan was made from a manifest with digest")
    assert fleet.registry.snapshot() == before
    assert fleet.ops() == {}
    assert fleet.log.of() == []
    with engine.connect() as conn:
        assert apply_log.recent(conn) == []


def test_a_replica_that_starts_unhealthy_makes_exit_code_3(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    fleet.agent("gpu-a").start_as("qwen/0", ReplicaState.UNHEALTHY)
    report = fleet.apply(result, desired)
    assert report.ok()
    assert [(o.action_id, o.replica_state) for o in report.unhealthy()] == [("load:qwen:gpu-a:0", "unhealthy")]
    assert report.exit_code(result) == 3
    states = {(r.instance, r.state, r.last_error) for r in fleet.registry.snapshot().replicas}
    assert states == {
        ("llama", ReplicaState.RUNNING, None),
        ("qwen", ReplicaState.UNHEALTHY, "replica qwen/0 is unhealthy"),
    }
    with engine.connect() as conn:
        assert apply_log.recent(conn)[0].outcome == "degraded"


def test_unschedulable_replicas_make_exit_code_3(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    desired = manifest(PINNED + instance("huge", vram="100GiB"))
    result = fleet.plan(desired)
    assert [u.instance for u in result.unschedulable] == ["huge"]
    report = fleet.apply(result, desired)
    assert report.ok()
    assert report.unhealthy() == ()
    assert report.exit_code(result) == 3


def test_a_node_without_an_agent_fails_only_its_actions(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")
    fleet.node("gpu-b", agent=False)
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    report = fleet.apply(result, desired)
    assert [(o.action_id, o.status, o.message) for o in report.outcomes] == [
        (
            "load:llama:gpu-b:0",
            "failed",
            "no agent for node gpu-b: it is not connected, so load:llama:gpu-b:0 cannot run there",
        ),
        ("load:qwen:gpu-a:0", "ok", f"running at {fleet.agent('gpu-a').replicas[('qwen', 0)].address}"),
    ]
    assert report.exit_code(result) == 1
    assert [r.node for r in fleet.registry.snapshot().replicas] == ["gpu-a"]
    assert list(fleet.ops()) == ["gpu-a/qwen/0/load"]


def test_a_replica_on_a_lost_node_without_an_agent_is_forgotten_and_replaced(
    engine: Engine, clock: ManualClock
) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", agent=False)
    desired = manifest("instances:\n" + instance("qwen"))
    fleet.registry.upsert_replica(
        replicas.ReplicaRecord("qwen", "gpu-a", 0, ReplicaState.RUNNING, config_hash=hash_of(desired, "qwen"))
    )
    clock.advance(120_000)
    assert fleet.registry.mark_missed_heartbeats(unhealthy_after_ms=30_000, offline_after_ms=90_000) == (0, 1)
    fleet.node("gpu-b")
    result = fleet.plan(desired)
    assert [a.id for a in result.actions] == ["load:qwen:gpu-b:1", "forget:qwen:gpu-a:0"]
    report = fleet.apply(result, desired)
    assert report.exit_code(result) == 0, report.outcomes
    assert "node gpu-a is lost: forgot the replica" in report.outcomes[1].message
    assert [(r.instance, r.node) for r in fleet.registry.snapshot().replicas] == [("qwen", "gpu-b")]
    assert fleet.plan(desired).is_empty, "the lost replica keeps coming back in plans"
    assert fleet.ops()["gpu-a/qwen/0/forget"].state is OpState.DONE


def test_a_forget_asks_no_agent_even_when_one_is_connected(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")  # its agent stays connected, but the registry declares the node lost
    desired = manifest("instances:\n" + instance("qwen"))
    fleet.registry.upsert_replica(
        replicas.ReplicaRecord("qwen", "gpu-a", 0, ReplicaState.RUNNING, config_hash=hash_of(desired, "qwen"))
    )
    clock.advance(120_000)
    assert fleet.registry.mark_missed_heartbeats(unhealthy_after_ms=30_000, offline_after_ms=90_000) == (0, 1)
    result = fleet.plan(desired)
    assert [a.id for a in result.actions] == ["forget:qwen:gpu-a:0"]
    report = fleet.apply(result, desired)
    assert [(o.action_id, o.status) for o in report.outcomes] == [("forget:qwen:gpu-a:0", "ok")]
    assert fleet.log.of() == []  # no agent was called
    assert fleet.registry.snapshot().replicas == ()


def test_a_backend_is_installed_before_the_load_that_needs_it(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", backends=())
    desired = manifest("instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    assert [(a.id, a.depends_on) for a in result.actions] == [
        ("install_backend:gpu-a:llama-cpp", ()),
        ("load:qwen:gpu-a:0", ("install_backend:gpu-a:llama-cpp",)),
    ]
    report = fleet.apply(result, desired)
    assert report.ok()
    assert report.outcomes[0].message == "installed: llama-cpp 1.0 (/opt/llama-cpp/bin/server)"
    assert fleet.log.find("install_backend", "llama-cpp").ended < fleet.log.find("load", "qwen/0").started
    assert fleet.registry.snapshot().nodes[0].backends == ("llama-cpp",)
    assert fleet.plan(desired).is_empty


def test_a_failed_install_is_recorded_and_skips_the_load(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", backends=())
    fleet.agent("gpu-a").fail("install_backend", "llama-cpp", "pip: no matching distribution")
    desired = manifest("instances:\n" + instance("qwen"))
    result = fleet.plan(desired)
    report = fleet.apply(result, desired)
    assert statuses(report.outcomes) == [
        ("install_backend:gpu-a:llama-cpp", "failed"),
        ("load:qwen:gpu-a:0", "skipped"),
    ]
    with engine.connect() as conn:
        rows = conn.execute(select(node_backends.c.state, node_backends.c.last_error)).all()
    assert [tuple(r) for r in rows] == [("failed", "pip: no matching distribution")]
    assert fleet.log.of("load") == []


@pytest.mark.parametrize(
    ("node_gib", "new_vram", "strategy", "reserved"),
    [(80, "6GiB", "surge", 6 * GIB), (8, "7GiB", "stop_first", 1 * GIB)],
)
def test_a_restart_reserves_what_its_strategy_needs(
    engine: Engine, clock: ManualClock, node_gib: int, new_vram: str, strategy: str, reserved: int
) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", vram_gib=node_gib)
    first = manifest("instances:\n" + instance("qwen"))
    assert fleet.apply(fleet.plan(first), first).ok()
    fleet.registry.heartbeat([Heartbeat("gpu-a", available_vram=(node_gib - 6) * GIB, available_ram=0)])
    changed = manifest("instances:\n" + instance("qwen", vram=new_vram, ctx=4096))
    result = fleet.plan(changed)
    [restart] = result.actions
    assert (restart.id, restart.details_as(RestartDetails).strategy) == ("restart:qwen:gpu-a:0", strategy)
    report = fleet.apply(result, changed)
    assert report.ok()
    assert [o.replica_state for o in report.outcomes] == ["running"]
    [(_, _, size, reason)] = [row for row in fleet.reservation_ledger() if row[0].startswith("restart:")]
    assert (size, reason) == (reserved, "done")
    [replica] = fleet.registry.snapshot().replicas
    assert (replica.config_hash, replica.restarts, replica.state) == (
        hash_of(changed, "qwen"),
        1,
        ReplicaState.RUNNING,
    )
    assert fleet.ops()["gpu-a/qwen/0/restart"].state is OpState.DONE


def test_a_restart_without_room_leaves_the_apply_degraded(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", vram_gib=8)
    first = manifest("instances:\n" + instance("qwen"))
    assert fleet.apply(fleet.plan(first), first).ok()
    fleet.registry.heartbeat([Heartbeat("gpu-a", available_vram=2 * GIB, available_ram=0)])
    grown = manifest("instances:\n" + instance("qwen", vram="12GiB", ctx=4096))
    result = fleet.plan(grown)
    assert (result.actions, [u.instance for u in result.unschedulable]) == ((), ["qwen"])
    report = fleet.apply(result, grown)
    assert report.exit_code(result) == 3  # applied (nothing), but a replica cannot run its desired config


def test_nodes_are_approved_and_labelled_before_loads_on_them(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a", approve=False)
    desired = manifest(
        "nodes:\n  gpu-a: {approved: true, labels: {tier: fast}, max_replicas_per_model: 3}\n"
        "instances:\n" + instance("qwen", scheduling="node_selector: {tier: fast}")
    )
    result = fleet.plan(desired)
    assert [(a.id, a.depends_on) for a in result.actions] == [
        ("approve_node:gpu-a", ()),
        ("set_labels:gpu-a", ()),
        ("load:qwen:gpu-a:0", ("approve_node:gpu-a", "set_labels:gpu-a")),
    ]
    report = fleet.apply(result, desired)
    assert report.ok()
    [node] = fleet.registry.snapshot().nodes
    assert (node.approved, node.status, dict(node.labels)["tier"], node.max_replicas_per_model) == (
        True,
        NodeStatus.HEALTHY,
        "fast",
        3,
    )
    assert fleet.plan(desired).is_empty


def test_a_deposed_leader_runs_nothing(engine: Engine, clock: ManualClock) -> None:
    fleet = two_nodes(engine, clock)
    epoch = fleet.registry.acquire_lease("controller", "ctl-1", ttl_ms=10_000)
    assert epoch is not None
    desired = manifest(PINNED)
    result = fleet.plan(desired)
    clock.advance(20_000)
    assert fleet.registry.acquire_lease("controller", "ctl-2", ttl_ms=10_000) == epoch + 1
    report = fleet.apply(result, desired, fence=Fence("controller", "ctl-1", epoch))
    assert {o.status for o in report.outcomes} == {"skipped"}
    assert all(o.message.startswith("lost leadership: lease 'controller'") for o in report.outcomes)
    assert report.exit_code(result) == 1
    assert fleet.log.of() == []
    assert fleet.registry.snapshot().replicas == ()
    with engine.connect() as conn:
        assert apply_log.recent(conn) == []


def test_a_leader_deposed_mid_apply_finishes_nothing_more(engine: Engine, clock: ManualClock) -> None:
    fleet = Fleet(engine, clock)
    fleet.node("gpu-a")
    epoch = fleet.registry.acquire_lease("controller", "ctl-1", ttl_ms=10_000)
    assert epoch is not None
    desired = manifest("instances:\n" + instance("a1") + instance("a2"))
    result = fleet.plan(desired)
    assert [a.id for a in result.actions] == ["load:a1:gpu-a:0", "load:a2:gpu-a:0"]
    release = fleet.agent("gpu-a").hold("load")
    fence = Fence("controller", "ctl-1", epoch)
    running = Background(lambda: fleet.apply(result, desired, per_node_limit=1, fence=fence))
    assert fleet.log.wait_for_active({"gpu-a": 1})
    clock.advance(20_000)
    assert fleet.registry.acquire_lease("controller", "ctl-2", ttl_ms=10_000) == epoch + 1
    release.set()
    report = running.join()
    first, second = report.outcomes
    assert (first.status, first.message.startswith("lost leadership during this action")) == ("failed", True)
    assert (second.status, second.message.startswith("lost leadership: ")) == ("skipped", True)
    assert [c.target for c in fleet.log.of("load")] == ["a1/0"]
    assert fleet.open_reservations() == []
    assert fleet.ops()["gpu-a/a1/0/load"].attempts == 1
    with engine.connect() as conn:
        assert apply_log.recent(conn) == []
