"""A model file a node's agent said it lacks (``ObservedNode.missing_models``): placement rules the node out
(``model_missing``, counted like every rejection), a restart in place there is not planned, and the plan's notes
name the path and the nodes. A repository id and a ``command_override`` instance are never ruled out."""

from __future__ import annotations

from fleetd.core.observed import with_missing_models
from fleetd.planning.planner import plan
from fleetd.planning.plans import Unschedulable
from fleetd.planning.rendering import render_text
from tests.planning.test_planner_scenarios import (
    NOW,
    failed,
    gpu,
    instance,
    manifest,
    observed,
    replica,
    summary,
)

QWEN = "/models/qwen.gguf"
LACKS_QWEN = frozenset({QWEN})


def test_a_node_without_the_model_file_is_ruled_out() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    # gpu-a would win on binpack (fuller), but its agent said the file is not there
    nodes = [gpu("gpu-a", 10, missing_models=LACKS_QWEN), gpu("gpu-b")]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert summary(result) == [("load:qwen:gpu-b:0", "scale_up", ())]
    assert result.unschedulable == () and result.notes == ()


def test_when_no_node_has_the_file_the_plan_names_the_path_and_the_nodes() -> None:
    desired = manifest("instances:\n" + instance("qwen", min_replicas=2, max_replicas=2) + instance("tiny"))
    nodes = [
        gpu("gpu-a", missing_models=LACKS_QWEN),
        gpu("gpu-b", missing_models=LACKS_QWEN | {"/models/other.gguf"}),
        gpu("gpu-c", 2, missing_models=LACKS_QWEN),  # short of VRAM too: the model is checked first
    ]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert [a.id for a in result.actions] == ["load:tiny:gpu-a:0"]  # tiny's file is there
    assert result.unschedulable == (Unschedulable("qwen", 2, (("model_missing", 3),)),)
    assert result.notes == ("qwen: model /models/qwen.gguf not found on nodes gpu-a, gpu-b, gpu-c",)
    text = render_text(result, ("fleet.yaml",))
    assert "  qwen: 2 replicas not placed — 3 nodes: model file not found there\n" in text
    assert "Notes:\n  qwen: model /models/qwen.gguf not found on nodes gpu-a, gpu-b, gpu-c\n" in text


def test_a_long_list_of_nodes_is_cut_short() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    nodes = [gpu(f"gpu-{i}", missing_models=LACKS_QWEN) for i in range(8)]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert result.notes == (
        "qwen: model /models/qwen.gguf not found on nodes gpu-0, gpu-1, gpu-2, gpu-3, gpu-4 and 3 more",
    )


def test_a_restart_onto_a_model_missing_on_the_node_is_not_planned() -> None:
    two = instance("qwen", min_replicas=2)
    old = manifest("instances:\n" + two)
    new = manifest("instances:\n" + two.replace("/models/qwen.gguf", "/models/qwen-v2.gguf"))
    before = observed(
        [gpu("gpu-a", missing_models=frozenset({"/models/qwen-v2.gguf"})), gpu("gpu-b")],
        [replica(old, "qwen", "gpu-a", 0), replica(old, "qwen", "gpu-b", 1)],
    )
    result = plan(new, before, now_ms=NOW)
    # gpu-b has the new file and restarts; gpu-a keeps its running process instead of trading it for a failure
    assert [a.id for a in result.actions] == ["restart:qwen:gpu-b:1"]
    assert result.unschedulable == (Unschedulable("qwen", 1, (("model_missing", 1),)),)
    assert result.notes == ("qwen: model /models/qwen-v2.gguf not found on node gpu-a",)


def test_a_failed_replica_is_not_restarted_where_its_model_is_missing() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    before = observed(
        [gpu("gpu-a", missing_models=LACKS_QWEN), gpu("gpu-b", missing_models=LACKS_QWEN)],
        [failed(desired, "gpu-a", 0, minutes_ago=10)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("model_missing", 1),)),)
    assert result.notes == ("qwen: model /models/qwen.gguf not found on nodes gpu-a, gpu-b",)


def test_a_repository_id_and_a_command_override_are_never_ruled_out() -> None:
    desired = manifest(
        "instances:\n"
        "  hub: {backend: llama-cpp, model: org/qwen, vram: 1GiB}\n"
        f"  own: {{backend: llama-cpp, model: {QWEN}, vram: 1GiB, command_override: [/opt/serve.sh]}}\n"
    )
    nodes = [gpu("gpu-a", missing_models=frozenset({"org/qwen", QWEN}))]
    result = plan(desired, observed(nodes), now_ms=NOW)
    assert sorted(a.id for a in result.actions) == ["load:hub:gpu-a:0", "load:own:gpu-a:0"]
    assert result.unschedulable == ()


def test_missing_models_are_a_reading_outside_the_fingerprint() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    state = observed([gpu("gpu-a"), gpu("gpu-b")])
    told = with_missing_models(state, {"gpu-a": LACKS_QWEN, "gpu-b": frozenset()})
    assert told.fingerprint == state.fingerprint and told.placement_digest == state.placement_digest
    assert [n.missing_models for n in told.nodes] == [LACKS_QWEN, frozenset()]
    assert with_missing_models(state, {"gpu-a": frozenset()}) is state  # nothing missing: the same value
    assert (
        plan(desired, told, now_ms=NOW).observed_fingerprint
        == plan(desired, state, now_ms=NOW).observed_fingerprint
    )


def test_an_eviction_never_makes_room_on_a_node_without_the_file() -> None:
    desired = manifest(
        "instances:\n"
        + instance("big", vram="20GiB", scheduling="priority: 100")
        + instance("small", vram="8GiB", scheduling="priority: 0")
    )
    before = observed(
        [gpu("gpu-a", 4, total_gib=24, missing_models=frozenset({"/models/big.gguf"}))],
        [replica(desired, "small", "gpu-a", 0, vram_gib=8)],
    )
    result = plan(desired, before, now_ms=NOW)
    assert result.actions == ()  # evicting small would not let big start there
    assert result.unschedulable == (Unschedulable("big", 1, (("model_missing", 1),)),)
