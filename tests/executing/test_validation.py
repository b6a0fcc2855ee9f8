"""``check_executable`` and ``ApplyReport.exit_code`` on hand-built plans (no registry needed)."""

from __future__ import annotations

import pytest

from fleetd.executing import ActionOutcome, ApplyReport, OutcomeStatus, PlanMismatch, check_executable
from fleetd.planning.plans import Action, LoadDetails, Plan, Reason, Unschedulable, install_action, load_action
from tests.executing.fleet import hash_of, instance, manifest

DESIRED = manifest("instances:\n" + instance("qwen"))


def load(node: str, *, name: str = "qwen", depends_on: tuple[str, ...] = (), config: str | None = None) -> Action:
    return load_action(
        name,
        node,
        0,
        backend="llama-cpp",
        reason=Reason.SCALE_UP,
        details=LoadDetails(config or hash_of(DESIRED, "qwen"), 1),
        depends_on=depends_on,
    )


def test_a_plan_that_fits_passes() -> None:
    check_executable(Plan((load("gpu-a"), load("gpu-b", depends_on=("load:qwen:gpu-a:0",)))), DESIRED)


def test_every_problem_is_listed() -> None:
    plan = Plan(
        (
            load("gpu-a", depends_on=("load:qwen:gpu-b:0",)),
            load("gpu-b", depends_on=("load:qwen:gpu-a:0",)),
            load("gpu-c", depends_on=("unload:gone:gpu-c:0",), config="sha256:other"),
            load("gpu-d", name="mistral"),
            install_action("gpu-a", "vllm", "image:vllm/vllm-openai:v0.11.0"),
        ),
        desired_digest="sha256:another-manifest",
    )
    with pytest.raises(PlanMismatch) as raised:
        check_executable(plan, DESIRED)
    assert raised.value.problems == (
        f"the plan was made from a manifest with digest sha256:another-manifest, not this one ({DESIRED.digest})",
        "load:qwen:gpu-c:0 depends on unload:gone:gpu-c:0, which is not in the plan",
        "depends_on has a cycle among load:qwen:gpu-a:0, load:qwen:gpu-b:0",
        f"load:qwen:gpu-c:0: the plan's launch config (sha256:other) is not the desired one "
        f"({hash_of(DESIRED, 'qwen')})",
        "load:mistral:gpu-d:0: instance mistral is not in the desired state",
        "install_backend:gpu-a:vllm: backend vllm is not in the desired state",
    )
    assert str(raised.value).startswith(
        "the plan does not match the desired state; plan again (nothing was changed)"
    )


def outcome(status: OutcomeStatus, state: str | None = "running") -> ActionOutcome:
    return ActionOutcome("load:qwen:gpu-a:0", "load", "gpu-a", status, "", 0, state)


@pytest.mark.parametrize(
    ("outcomes", "unschedulable", "code"),
    [
        ((outcome("ok"),), (), 0),
        ((outcome("ok", "unhealthy"),), (), 3),
        ((outcome("ok"),), (Unschedulable("big", 1, (("insufficient_vram", 1),)),), 3),
        ((outcome("failed", None),), (), 1),
        ((outcome("skipped", None),), (Unschedulable("big", 1, ()),), 1),
    ],
)
def test_exit_codes(
    outcomes: tuple[ActionOutcome, ...], unschedulable: tuple[Unschedulable, ...], code: int
) -> None:
    plan = Plan((load("gpu-a"),), unschedulable=unschedulable)
    assert ApplyReport(plan.hash, outcomes).exit_code(plan) == code


def test_a_report_refuses_another_plans_exit_code() -> None:
    with pytest.raises(ValueError, match="this report is of plan"):
        ApplyReport("sha256:x", ()).exit_code(Plan((load("gpu-a"),)))
