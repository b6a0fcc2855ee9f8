"""Saved plans: exact round trip, version refusal, tamper detection and type errors that name the JSON path."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fleetd.planning.planfile import FORMAT_VERSION, PlanFileError, dumps_plan, loads_plan
from fleetd.planning.plans import LabelDetails, Plan, forget_action
from fleetd.planning.rendering import render_json
from tests.planning.sample_plans import GIB, PATHS, PLANS, mixed_plan


@pytest.mark.parametrize("name", list(PLANS))
def test_round_trip_is_exact(name: str) -> None:
    plan = PLANS[name]()
    saved = loads_plan(dumps_plan(plan, PATHS))
    assert saved.plan == plan
    assert saved.plan.hash == plan.hash
    assert saved.manifest_paths == PATHS
    assert dumps_plan(saved.plan, saved.manifest_paths) == dumps_plan(plan, PATHS)


def test_round_trip_keeps_backend_details_and_dependencies() -> None:
    plan = mixed_plan()
    loaded = loads_plan(dumps_plan(plan, ["a.yaml", "b.yaml"]))
    assert loaded.manifest_paths == ("a.yaml", "b.yaml")
    install = loaded.plan.action("install_backend:gpu-c:llama-cpp")
    assert install is not None
    assert install.backend == "llama-cpp"
    assert install.depends_on == ("approve_node:gpu-c",)
    labels = loaded.plan.action("set_labels:gpu-a")
    assert labels is not None
    assert labels.details_as(LabelDetails).labels == (("tier", "fast"), ("zone", "eu-1"))
    assert labels.details_as(LabelDetails).max_replicas_per_model == 2
    assert loaded.plan.revision == "3f2c1a9"
    assert loaded.plan.created_at == plan.created_at
    assert loaded.plan.notes == plan.notes


def test_the_json_rendering_is_the_saved_plan() -> None:
    assert render_json(mixed_plan(), PATHS) == dumps_plan(mixed_plan(), PATHS)


def _edited(edit: Callable[[dict[str, Any]], None], plan: Plan | None = None) -> str:
    doc = json.loads(dumps_plan(plan or mixed_plan(), PATHS))
    edit(doc)
    return json.dumps(doc)


def _error(text: str) -> str:
    with pytest.raises(PlanFileError) as info:
        loads_plan(text)
    return str(info.value)


def test_a_newer_major_version_is_refused_before_anything_else() -> None:
    def newer(doc: dict[str, Any]) -> None:
        doc.clear()
        doc.update({"format_version": "3", "steps": []})

    message = _error(_edited(newer))
    assert message.startswith("format_version: this plan file has format 3, and this fleetd reads format 2")
    assert "make the plan again" in message


def test_a_plan_saved_by_an_older_fleetd_is_refused() -> None:
    def older(doc: dict[str, Any]) -> None:
        doc["format_version"] = "1"

    assert _error(_edited(older)) == (
        "format_version: saved plan format 1 was written by an older fleetd; plan again"
    )
    assert _error(_edited(lambda doc: doc.update(format_version="1.2"))).endswith("older fleetd; plan again")


def test_every_kind_of_details_round_trips() -> None:
    lost = forget_action("qwen-7b", "gpu-lost", 3, vram_bytes=6 * GIB)
    plan = Plan(actions=(*mixed_plan().actions, lost))
    text = dumps_plan(plan, PATHS)
    assert loads_plan(text).plan == plan
    forget = next(a for a in json.loads(text)["actions"] if a["kind"] == "forget")
    assert forget["id"] == "forget:qwen-7b:gpu-lost:3"
    assert (forget["reason"], forget["details"]) == ("node_lost", {"vram_bytes": 6 * GIB})
    assert json.loads(text)["summary"]["forget"] == 1


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["actions"][4]["details"].update(vram=1),
            "actions[4].details.vram: unknown field; expected one of: config_hash, from_node, vram_bytes",
        ),
        (lambda d: d["actions"][4]["details"].pop("config_hash"), "actions[4].details.config_hash: is required"),
        (
            lambda d: d["actions"][7]["details"].update(strategy="blue_green"),
            "actions[7].details.strategy: unknown restart strategy 'blue_green'; expected one of: surge, stop_first",
        ),
        (
            lambda d: d["actions"][1]["details"].update(max_replicas_per_model=0),
            "actions[1].details.max_replicas_per_model: expected an integer of at least 1, got 0",
        ),
        (lambda d: d["actions"][0]["details"].update(labels={}), "actions[0].details.labels: unknown field"),
    ],
)
def test_details_are_read_as_their_kind_s_details(edit: Callable[[dict[str, Any]], Any], expected: str) -> None:
    assert _error(_edited(edit)).startswith(expected)


def test_a_minor_version_is_accepted_and_may_add_fields() -> None:
    def minor(doc: dict[str, Any]) -> None:
        doc["format_version"] = "2.3"
        doc["signed_by"] = "ci"
        doc["actions"][0]["note"] = "added in 1.3"

    assert loads_plan(_edited(minor)).plan == mixed_plan()


def test_unknown_fields_are_refused_in_the_current_version() -> None:
    def typo(doc: dict[str, Any]) -> None:
        doc["actions"][4]["replcia"] = 3

    assert FORMAT_VERSION == "2"
    assert _error(_edited(typo)).startswith("actions[4].replcia: unknown field; expected one of: ")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (1, 'format_version: expected a version string such as "2", got 1'),
        ("v1", 'format_version: expected a version string such as "2", got "v1"'),
        (None, 'format_version: expected a version string such as "2", got null'),
    ],
)
def test_malformed_version(version: Any, expected: str) -> None:
    def set_version(doc: dict[str, Any]) -> None:
        doc["format_version"] = version

    assert _error(_edited(set_version)) == expected


def test_missing_version() -> None:
    assert _error(_edited(lambda doc: doc.pop("format_version"))) == "format_version: is required"


def test_an_edited_action_breaks_the_plan_hash() -> None:
    def more_vram(doc: dict[str, Any]) -> None:
        load = next(a for a in doc["actions"] if a["id"] == "load:qwen-7b:gpu-c:1")
        load["details"]["vram_bytes"] = 1

    message = _error(_edited(more_vram))
    assert message.startswith("plan_hash: the actions hash to sha256:")
    assert f"not {mixed_plan().hash}" in message
    assert "edited or is corrupt" in message


def test_a_dropped_action_breaks_the_plan_hash_even_with_the_summary_fixed() -> None:
    plan = mixed_plan()

    def drop(doc: dict[str, Any]) -> None:
        doc["actions"] = [a for a in doc["actions"] if a["kind"] != "drain_node"]
        doc["summary"]["drain_node"] = 0

    assert _error(_edited(drop, plan)).startswith("plan_hash: ")


def test_a_summary_that_does_not_count_the_actions_is_refused() -> None:
    def lie(doc: dict[str, Any]) -> None:
        doc["summary"]["unload"] = 0

    assert _error(_edited(lie)).startswith('summary: {"load": 3, "unload": 0')


def test_an_id_that_does_not_match_its_fields_is_refused() -> None:
    def move(doc: dict[str, Any]) -> None:
        doc["actions"][4]["node"] = "gpu-z"

    assert _error(_edited(move)) == (
        "actions[4].id: 'load:qwen-7b:gpu-c:1' is not the id of this action ('load:qwen-7b:gpu-z:1'); "
        "the file was edited"
    )


def test_duplicate_actions_are_refused() -> None:
    def dup(doc: dict[str, Any]) -> None:
        doc["actions"].append(doc["actions"][0])

    assert _error(_edited(dup)) == "actions[12].id: 'approve_node:gpu-c' appears twice (also actions[0])"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["actions"][4].update(replica="1"),
            'actions[4].replica: expected an integer or null, got "1"',
        ),
        (
            lambda d: d["actions"][4].update(replica=True),
            "actions[4].replica: expected an integer or null, got true",
        ),
        (
            lambda d: d["actions"][4].update(replica=-1),
            "actions[4].replica: expected an integer of at least 0, got -1",
        ),
        (
            lambda d: d["actions"][4].update(kind="reload"),
            "actions[4].kind: unknown action kind 'reload'; expected one of: ",
        ),
        (
            lambda d: d["actions"][4].update(reason="whim"),
            "actions[4].reason: unknown reason 'whim'; expected one of: ",
        ),
        (lambda d: d["actions"][4].update(node=None), "actions[4].node: expected a string, got null"),
        (lambda d: d["actions"][4].pop("node"), "actions[4].node: is required"),
        (lambda d: d["actions"][4].update(depends_on="x"), 'actions[4].depends_on: expected an array, got "x"'),
        (lambda d: d["actions"][4].update(depends_on=[1]), "actions[4].depends_on[0]: expected a string, got 1"),
        (
            lambda d: d["actions"][4]["details"].update(vram_bytes=1.5),
            "actions[4].details.vram_bytes: expected an integer, got 1.5",
        ),
        (
            lambda d: d["actions"][1]["details"]["labels"].update(tier=1),
            "actions[1].details.labels.tier: expected a string, got 1",
        ),
        (lambda d: d["actions"].__setitem__(0, []), "actions[0]: expected an object, got an array"),
        (lambda d: d.update(actions={}), "actions: expected an array, got an object"),
        (
            lambda d: d["manifest"].update(paths="fleet.yaml"),
            'manifest.paths: expected an array, got "fleet.yaml"',
        ),
        (lambda d: d["manifest"].update(revision=7), "manifest.revision: expected a string or null, got 7"),
        (lambda d: d["observed"].pop("fingerprint"), "observed.fingerprint: is required"),
        (lambda d: d.update(created_at=0), "created_at: expected a string, got 0"),
        (
            lambda d: d["unschedulable"][0].update(missing="1"),
            'unschedulable[0].missing: expected an integer, got "1"',
        ),
        (
            lambda d: d["unschedulable"][0]["reasons"].update(selector=-1),
            "unschedulable[0].reasons.selector: expected a node count, got -1",
        ),
        (lambda d: d.update(notes=[None]), "notes[0]: expected a string, got null"),
    ],
)
def test_type_errors_name_the_json_path(edit: Callable[[dict[str, Any]], Any], expected: str) -> None:
    assert _error(_edited(edit)).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "not valid JSON: Expecting value (line 1, column 1)"),
        ("[]", "expected a JSON object at the top level, got an array"),
        ('{"format_version": "1", "format_version": "2"}', "the key 'format_version' appears twice in one object"),
        ('{"format_version": NaN}', "NaN is not a JSON number"),
    ],
)
def test_documents_that_are_not_plans(text: str, expected: str) -> None:
    assert _error(text) == expected
