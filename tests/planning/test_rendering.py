"""Golden tests for the text, JSON and Markdown renderings of hand-built plans.

The expected output lives in ``tests/planning/golden/<plan>.<ext>``. After an intended change, regenerate with
``FLEETD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/planning/test_rendering.py`` and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetd.planning.plans import Plan, Reason, Unschedulable, forget_action, labels_action, unload_action
from fleetd.planning.rendering import (
    COLLAPSE_AFTER,
    render_json,
    render_markdown,
    render_text,
    summary_line,
    unschedulable_line,
)
from tests.planning.sample_plans import GIB, PATHS, PLANS, large_plan, mixed_plan

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("FLEETD_UPDATE_GOLDEN") == "1"

RENDERERS: dict[str, Callable[[Plan, tuple[str, ...]], str]] = {
    "txt": render_text,
    "json": render_json,
    "md": render_markdown,
}
CASES = [
    (name, ext)
    for name in PLANS
    for ext in RENDERERS
    if name != "large" or ext == "md"  # the large plan is there for Markdown's folding
]


@pytest.mark.parametrize(("name", "ext"), CASES, ids=[f"{n}.{e}" for n, e in CASES])
def test_golden(name: str, ext: str) -> None:
    rendered = RENDERERS[ext](PLANS[name](), PATHS)
    path = GOLDEN / f"{name}.{ext}"
    if UPDATE:
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"{path} is missing; create it with FLEETD_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert rendered == expected, (
        f"{path} differs; if the change is intended, regenerate with FLEETD_UPDATE_GOLDEN=1"
    )


def test_no_golden_file_is_orphaned() -> None:
    expected = {f"{name}.{ext}" for name, ext in CASES}
    assert {p.name for p in GOLDEN.iterdir()} == expected


@pytest.mark.parametrize("render", [render_text, render_markdown, render_json])
def test_renderings_do_not_depend_on_action_order(render: Callable[[Plan, tuple[str, ...]], str]) -> None:
    plan = mixed_plan()
    shuffled = list(plan.actions)
    random.Random(7).shuffle(shuffled)
    other = dataclasses.replace(plan, actions=tuple(shuffled))
    if render is render_json:  # JSON keeps the planner's (execution) order; the hash does not depend on it
        assert json.loads(render(other, PATHS))["plan_hash"] == json.loads(render(plan, PATHS))["plan_hash"]
    else:
        assert render(other, PATHS) == render(plan, PATHS)


def test_text_pairs_a_replace_load_with_the_unload_that_waits_for_it() -> None:
    text = render_text(mixed_plan(), PATHS)
    assert "  ± replace qwen-7b gpu-old (replica 0) -> gpu-a (replica 2): drained, vram 6GiB" in text
    assert "unload qwen-7b" not in text
    assert "load qwen-7b on gpu-a" not in text
    # an eviction is not a replace: the load depends on an unload, not the other way round
    assert "  + load chat on gpu-b (replica 0): scale_up, vram 4.7GiB" in text
    assert "  - unload batch on gpu-b (replica 0): evicted" in text


def test_a_replace_load_without_its_unload_renders_as_a_load() -> None:
    plan = mixed_plan()
    plan = dataclasses.replace(plan, actions=tuple(a for a in plan.actions if a.id != "unload:qwen-7b:gpu-old:0"))
    assert "  + load qwen-7b on gpu-a (replica 2): replace, vram 6GiB" in render_text(plan, PATHS)


def test_footer_counts_every_kind_and_mentions_the_rest_only_when_present() -> None:
    assert summary_line(mixed_plan()) == (
        "Plan: 3 to load, 2 to restart, 3 to unload, 1 backend to install, 1 node to relabel, "
        "1 node to approve, 1 node to drain."
    )
    only_unload = Plan(actions=(unload_action("x", "n", 0, reason=Reason.REMOVED, vram_bytes=0),))
    assert summary_line(only_unload) == "Plan: 0 to load, 0 to restart, 1 to unload."


def test_empty_plan_says_no_changes() -> None:
    text = render_text(PLANS["empty"](), PATHS)
    assert text.rstrip().endswith("No changes. The fleet matches the manifest.")
    assert "Nodes:" not in text
    assert "Replicas:" not in text


def test_unschedulable_line_uses_people_words_and_puts_most_nodes_first() -> None:
    item = Unschedulable("big", 1, (("insufficient_vram", 3), ("selector", 1)))
    assert unschedulable_line(item) == "big: 1 replica not placed — 3 nodes: insufficient VRAM; 1 node: selector"
    item = Unschedulable(
        "x",
        2,
        (("cooldown", 1), ("draining", 2), ("not_allowed", 4), ("not_ready", 1), ("platform", 1), ("z_new", 1)),
    )
    assert unschedulable_line(item) == (
        "x: 2 replicas not placed — 4 nodes: not in the nodes list; 2 nodes: draining; 1 node: cooldown; "
        "1 node: not healthy or not approved; 1 node: backend not supported; 1 node: z new"
    )


def test_set_labels_shows_only_the_labels_and_says_when_there_are_none() -> None:
    action = labels_action("gpu-a", ())
    assert "  ~ set_labels gpu-a: (no labels)" in render_text(Plan(actions=(action,)))


def test_markdown_folds_long_action_lists_only() -> None:
    assert len(large_plan().actions) > COLLAPSE_AFTER
    assert "<details><summary>60 actions</summary>" in render_markdown(large_plan(), PATHS)
    assert "<details>" not in render_markdown(mixed_plan(), PATHS)


def test_markdown_escapes_free_text_in_notes() -> None:
    plan = Plan(actions=(), notes=("replica x failed: <script> *boom* | `rm`",))
    md = render_markdown(plan)
    assert "- replica x failed: &lt;script&gt; \\*boom\\* \\| \\`rm\\`" in md


def test_json_has_the_design_shape() -> None:
    doc = json.loads(render_json(mixed_plan(), PATHS))
    assert list(doc) == [
        "format_version",
        "plan_hash",
        "created_at",
        "manifest",
        "observed",
        "actions",
        "unschedulable",
        "notes",
        "summary",
    ]
    assert doc["format_version"] == "2"
    assert doc["manifest"] == {
        "paths": ["fleet.yaml"],
        "digest": mixed_plan().desired_digest,
        "revision": "3f2c1a9",
    }
    assert doc["plan_hash"] == mixed_plan().hash
    assert doc["summary"] == {
        "load": 3,
        "unload": 3,
        "forget": 0,
        "restart": 2,
        "install_backend": 1,
        "set_labels": 1,
        "approve_node": 1,
        "drain_node": 1,
    }
    load = next(a for a in doc["actions"] if a["id"] == "load:qwen-7b:gpu-c:1")
    assert load == {
        "id": "load:qwen-7b:gpu-c:1",
        "kind": "load",
        "instance": "qwen-7b",
        "node": "gpu-c",
        "replica": 1,
        "backend": "llama-cpp",
        "reason": "scale_up",
        "depends_on": ["approve_node:gpu-c", "install_backend:gpu-c:llama-cpp"],
        "details": {"config_hash": load["details"]["config_hash"], "vram_bytes": 6 * GIB},
    }
    labels = next(a for a in doc["actions"] if a["kind"] == "set_labels")
    assert labels["details"]["labels"] == {"tier": "fast", "zone": "eu-1"}
    assert labels["instance"] is None
    assert labels["replica"] is None
    assert labels["backend"] is None
    assert doc["unschedulable"][0] == {
        "instance": "big",
        "missing": 1,
        "reasons": {"insufficient_vram": 3, "selector": 1},
    }


def test_a_forget_has_its_line_and_its_footer_count() -> None:
    plan = Plan(
        actions=(
            forget_action("qwen", "gpu-a", 0, vram_bytes=6 * GIB),
            unload_action("old", "gpu-b", 1, reason=Reason.REMOVED, vram_bytes=GIB),
        )
    )
    text = render_text(plan, PATHS)
    assert "  - forget qwen on gpu-a (replica 0): node_lost\n" in text
    assert text.endswith("Plan: 0 to load, 0 to restart, 1 to unload, 1 to forget.\n")
    markdown = render_markdown(plan, PATHS)
    assert "- forget qwen on gpu-a (replica 0): node_lost\n" in markdown
    assert "**Plan: 0 to load, 0 to restart, 1 to unload, 1 to forget.**" in markdown
    assert "to forget" not in summary_line(mixed_plan())  # only when there is something to forget
