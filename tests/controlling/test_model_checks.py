"""``plan_checking_models``: the nodes a plan loads on are asked which model files they lack, each at most once,
and the plan is made again with their answers. A converged plan asks nobody; a node that cannot answer is
taken to have the files. The agents are the executor tests' ``FakeAgent`` (its ``models`` are the files it has)."""

from __future__ import annotations

from fleetd.controlling.model_checks import plan_checking_models
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedState
from fleetd.planning.planner import plan
from fleetd.planning.plans import Plan, Unschedulable
from tests.executing.fake_agent import CallLog, FakeAgent
from tests.planning.test_planner_scenarios import NOW, gpu, instance, manifest, observed, replica

QWEN = "/models/qwen.gguf"
TINY = "/models/tiny.gguf"


def agents(log: CallLog, **files: tuple[str, ...]) -> dict[str, FakeAgent]:
    return {name: FakeAgent(name, log, models=dict.fromkeys(paths, 0)) for name, paths in files.items()}


def checked(
    desired: DesiredState, state: ObservedState, nodes: dict[str, FakeAgent]
) -> tuple[ObservedState, Plan]:
    return plan_checking_models(lambda seen: plan(desired, seen, now_ms=NOW), state, desired, nodes)


def asked(log: CallLog) -> list[tuple[str, str]]:
    return [(c.node, c.target) for c in log.of("missing_models")]


def test_the_target_node_lacking_the_file_is_asked_once_and_the_plan_moves() -> None:
    desired = manifest("instances:\n" + instance("qwen") + instance("tiny"))
    # binpack prefers the fuller gpu-a; gpu-b has the file; gpu-c is never a target
    state = observed([gpu("gpu-a", 20), gpu("gpu-b", 40), gpu("gpu-c")])
    log = CallLog()
    nodes = agents(log, **{"gpu-a": (TINY,), "gpu-b": (QWEN, TINY), "gpu-c": (QWEN, TINY)})
    seen, result = checked(desired, state, nodes)
    assert sorted(a.id for a in result.actions) == ["load:qwen:gpu-b:0", "load:tiny:gpu-a:0"]
    both = f"{QWEN},{TINY}"  # every node asked is asked about every model file of the manifest, in one call
    assert asked(log) == [("gpu-a", both), ("gpu-b", both)]
    assert [(n.name, n.missing_models) for n in seen.nodes] == [
        ("gpu-a", frozenset({QWEN})),
        ("gpu-b", frozenset()),
        ("gpu-c", frozenset()),
    ]


def test_a_converged_plan_asks_nobody() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    state = observed([gpu("gpu-a")], [replica(desired, "qwen", "gpu-a", 0)])
    log = CallLog()
    seen, result = checked(desired, state, agents(log, **{"gpu-a": ()}))
    assert result.is_empty and seen is state
    assert asked(log) == []


def test_when_no_node_has_the_file_each_is_asked_once_and_the_plan_says_so() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    state = observed([gpu("gpu-a", 20), gpu("gpu-b", 40), gpu("gpu-c")])
    log = CallLog()
    _, result = checked(desired, state, agents(log, **{"gpu-a": (), "gpu-b": (), "gpu-c": ()}))
    assert result.actions == ()
    assert result.unschedulable == (Unschedulable("qwen", 1, (("model_missing", 3),)),)
    assert result.notes == ("qwen: model /models/qwen.gguf not found on nodes gpu-a, gpu-b, gpu-c",)
    assert sorted(node for node, _ in asked(log)) == ["gpu-a", "gpu-b", "gpu-c"]


def test_a_node_that_cannot_answer_is_taken_to_have_the_file() -> None:
    desired = manifest("instances:\n" + instance("qwen"))
    log = CallLog()
    nodes = agents(log, **{"gpu-a": ()})
    nodes["gpu-a"].fail("missing_models", message="node gpu-a: cannot reach the agent")
    _, result = checked(desired, observed([gpu("gpu-a")]), nodes)
    assert [a.id for a in result.actions] == ["load:qwen:gpu-a:0"]


def test_repository_ids_and_nodes_without_an_agent_are_not_asked() -> None:
    hub = manifest("instances:\n  hub: {backend: llama-cpp, model: org/qwen, vram: 1GiB}\n")
    log = CallLog()
    _, result = checked(hub, observed([gpu("gpu-a")]), agents(log, **{"gpu-a": ()}))
    assert [a.id for a in result.actions] == ["load:hub:gpu-a:0"] and asked(log) == []
    desired = manifest("instances:\n" + instance("qwen"))
    _, unasked = checked(desired, observed([gpu("gpu-a")]), {})
    assert [a.id for a in unasked.actions] == ["load:qwen:gpu-a:0"]
