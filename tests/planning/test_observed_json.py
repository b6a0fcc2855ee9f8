"""The observed-state snapshot (``fleetd plan --observed``): round trip, defaults, canonical order, errors."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
    with_missing_models,
)
from fleetd.planning.observed_json import (
    SnapshotError,
    canonical_observed,
    dumps_observed,
    loads_observed,
    observed_document,
)

GIB = 1024**3

DESIGN_EXAMPLE = """
{"nodes": [{"name": "gpu-a", "status": "healthy", "labels": {"zone": "eu-1"}, "gpu_vendor": "nvidia",
            "total_vram": 85899345920, "available_vram": 85899345920, "total_ram": 0, "available_ram": 0,
            "max_replicas_per_model": 1, "backends": ["llama-cpp"]}],
 "replicas": [{"instance": "qwen-7b", "node": "gpu-a", "replica": 0, "state": "running", "address": "127.0.0.1:8081",
               "config_hash": "sha256:abc", "vram_bytes": 6442450944, "in_flight": 0, "last_used": "2026-11-23T08:00:00Z"}]}
"""


def full_state() -> ObservedState:
    return ObservedState(
        nodes=(
            ObservedNode(
                name="gpu-a",
                status=NodeStatus.HEALTHY,
                labels=(("tier", "fast"), ("zone", "eu-1")),
                gpu_vendor="nvidia",
                total_vram=80 * GIB,
                available_vram=60 * GIB,
                reserved_vram=6 * GIB,
                total_ram=256 * GIB,
                available_ram=200 * GIB,
                max_replicas_per_model=2,
                backends=("llama-cpp", "vllm"),
                approved=True,
            ),
            ObservedNode(name="gpu-new", status=NodeStatus.PENDING, gpu_vendor="amd", total_vram=24 * GIB),
        ),
        replicas=(
            ObservedReplica(
                instance="qwen-7b",
                node="gpu-a",
                replica=0,
                state=ReplicaState.RUNNING,
                address="10.0.0.5:8081",
                config_hash="sha256:abc",
                vram_bytes=6 * GIB,
                in_flight=3,
                last_used="2026-11-23T08:00:00Z",
                restarts=1,
                last_error="exit 137",
            ),
            ObservedReplica(instance="qwen-7b", node="gpu-a", replica=1, state=ReplicaState.STARTING),
        ),
        scheduling=(
            SchedulingRecord(
                "big",
                unsatisfiable_ticks=3,
                cooldown_until="2026-11-23T08:05:00Z",
                capacity="sha256:c",
                reasons=(("insufficient_vram", 2), ("selector", 1)),
            ),
        ),
    )


def test_round_trip_is_exact() -> None:
    state = full_state()
    assert loads_observed(dumps_observed(state)) == state
    assert loads_observed(dumps_observed(state)).fingerprint == state.fingerprint


def test_writes_every_field() -> None:
    doc = observed_document(full_state())
    assert list(doc) == ["nodes", "replicas", "scheduling"]
    assert doc["nodes"][0] == {
        "name": "gpu-a",
        "status": "healthy",
        "approved": True,
        "labels": {"tier": "fast", "zone": "eu-1"},
        "gpu_vendor": "nvidia",
        "total_vram": 80 * GIB,
        "available_vram": 60 * GIB,
        "reserved_vram": 6 * GIB,
        "total_ram": 256 * GIB,
        "available_ram": 200 * GIB,
        "max_replicas_per_model": 2,
        "backends": ["llama-cpp", "vllm"],
    }
    assert doc["replicas"][0] == {
        "instance": "qwen-7b",
        "node": "gpu-a",
        "replica": 0,
        "state": "running",
        "address": "10.0.0.5:8081",
        "config_hash": "sha256:abc",
        "vram_bytes": 6 * GIB,
        "in_flight": 3,
        "last_used": "2026-11-23T08:00:00Z",
        "restarts": 1,
        "last_error": "exit 137",
    }
    assert doc["scheduling"] == [
        {
            "instance": "big",
            "unsatisfiable_ticks": 3,
            "cooldown_until": "2026-11-23T08:05:00Z",
            "capacity": "sha256:c",
            "reasons": [["insufficient_vram", 2], ["selector", 1]],
        }
    ]


def test_state_since_is_written_when_known_and_read_back() -> None:
    state = full_state()
    dated = dataclasses.replace(state.replicas[0], state_since="2026-11-23T07:55:00Z")
    known = dataclasses.replace(state, replicas=(dated, state.replicas[1]))
    doc = observed_document(known)
    assert doc["replicas"][0]["state_since"] == "2026-11-23T07:55:00Z"
    assert "state_since" not in doc["replicas"][1]  # unknown: left out, as a registry from before it writes
    assert loads_observed(dumps_observed(known)) == known
    assert known.fingerprint == state.fingerprint  # a reading, like last_used


def test_missing_models_are_written_when_there_are_some_and_read_back() -> None:
    state = full_state()
    told = with_missing_models(state, {"gpu-a": frozenset({"/models/b.gguf", "/models/a.gguf"})})
    doc = observed_document(told)
    assert doc["nodes"][0]["missing_models"] == ["/models/a.gguf", "/models/b.gguf"]
    assert "missing_models" not in doc["nodes"][1]
    assert loads_observed(dumps_observed(told)) == told
    assert told.fingerprint == state.fingerprint  # a reading, asked at plan time
    doc["nodes"][0]["missing_models"] = "/models/a.gguf"
    with pytest.raises(SnapshotError, match=r"^nodes\[0\]\.missing_models: "):
        loads_observed(json.dumps(doc))


def test_state_since_must_be_a_utc_timestamp() -> None:
    doc = observed_document(full_state())
    doc["replicas"][0]["state_since"] = "2026-11-23T07:55:00"
    with pytest.raises(SnapshotError, match=r"^replicas\[0\]\.state_since: timestamp .* has no time zone"):
        loads_observed(json.dumps(doc))


def test_reads_the_design_example() -> None:
    state = loads_observed(DESIGN_EXAMPLE)
    node = state.node("gpu-a")
    assert node is not None
    assert node.approved is True  # absent: a healthy node has been approved
    assert node.reserved_vram == 0
    assert node.backends == ("llama-cpp",)
    assert state.replicas[0].vram_bytes == 6 * GIB
    assert state.replicas[0].restarts == 0
    assert state.scheduling == ()


@pytest.mark.parametrize(
    ("status", "approved"),
    [
        ("healthy", True),
        ("unhealthy", True),
        ("draining", True),
        ("offline", True),
        ("pending", False),
        ("registering", False),
    ],
)
def test_approved_defaults_by_status(status: str, approved: bool) -> None:
    state = loads_observed(json.dumps({"nodes": [{"name": "n", "status": status}]}))
    assert state.nodes[0].approved is approved


def test_an_explicit_approved_wins() -> None:
    state = loads_observed(json.dumps({"nodes": [{"name": "n", "status": "healthy", "approved": False}]}))
    assert state.nodes[0].approved is False


def test_minimal_snapshot_takes_the_dataclass_defaults() -> None:
    state = loads_observed(
        json.dumps(
            {
                "nodes": [{"name": "n", "status": "healthy"}],
                "replicas": [{"instance": "m", "node": "n", "replica": 0, "state": "running"}],
            }
        )
    )
    assert state == ObservedState(
        nodes=(ObservedNode("n", NodeStatus.HEALTHY, approved=True),),
        replicas=(ObservedReplica("m", "n", 0, ReplicaState.RUNNING),),
    )


def test_input_order_does_not_change_the_state_or_its_fingerprint() -> None:
    doc = observed_document(full_state())
    doc["nodes"].reverse()
    doc["replicas"].reverse()
    doc["nodes"][1]["backends"].reverse()
    doc["nodes"][1]["labels"] = dict(reversed(list(doc["nodes"][1]["labels"].items())))
    shuffled = loads_observed(json.dumps(doc))
    assert shuffled == full_state()
    assert shuffled.fingerprint == full_state().fingerprint


def test_writing_is_canonical_whatever_order_the_state_is_in() -> None:
    state = full_state()
    nodes = list(state.nodes)
    random.Random(3).shuffle(nodes)
    messy = ObservedState(nodes=tuple(reversed(nodes)), replicas=tuple(reversed(state.replicas)))
    assert dumps_observed(messy) == dumps_observed(canonical_observed(messy))
    assert json.loads(dumps_observed(messy))["nodes"][0]["name"] == "gpu-a"


def _error(edit: Callable[[dict[str, Any]], Any]) -> str:
    doc = observed_document(full_state())
    edit(doc)
    with pytest.raises(SnapshotError) as info:
        loads_observed(json.dumps(doc))
    return str(info.value)


def _third_node(doc: dict[str, Any]) -> None:
    doc["nodes"].append({"name": "gpu-c", "status": "healthy", "total_vram": "8GiB"})


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_third_node, 'nodes[2].total_vram: expected an integer, got "8GiB"'),
        (
            lambda d: d["nodes"][0].update(available_vram=-1),
            "nodes[0].available_vram: expected an integer of at least 0, got -1",
        ),
        (lambda d: d["nodes"][0].update(total_vram=1.0), "nodes[0].total_vram: expected an integer, got 1.0"),
        (
            lambda d: d["nodes"][0].update(max_replicas_per_model=True),
            "nodes[0].max_replicas_per_model: expected an integer, got true",
        ),
        (
            lambda d: d["nodes"][0].update(status="up"),
            "nodes[0].status: unknown status 'up'; expected one of: registering, pending, healthy",
        ),
        (lambda d: d["nodes"][0].pop("status"), "nodes[0].status: is required"),
        (lambda d: d["nodes"][0].update(approved="yes"), "nodes[0].approved: expected true or false"),
        (lambda d: d["nodes"][0].update(labels={"tier": 1}), "nodes[0].labels.tier: expected a string, got 1"),
        (
            lambda d: d["nodes"][0].update(labels=["tier"]),
            "nodes[0].labels: expected an object of strings, got an array",
        ),
        (lambda d: d["nodes"][0].update(backends=["a", "a"]), "nodes[0].backends[1]: 'a' is listed twice"),
        (lambda d: d["nodes"][0].update(totl_vram=1), "nodes[0].totl_vram: unknown field; expected one of: "),
        (
            lambda d: d["nodes"].append({"name": "gpu-a", "status": "healthy"}),
            "nodes[2]: name 'gpu-a' is already used by nodes[0]",
        ),
        (lambda d: d["nodes"].__setitem__(0, "gpu-a"), 'nodes[0]: expected an object, got "gpu-a"'),
        (lambda d: d.pop("nodes"), "nodes: is required"),
        (lambda d: d.update(extra=1), "extra: unknown field; expected one of: nodes, replicas, scheduling"),
        (
            lambda d: d["replicas"][1].update(state="up"),
            "replicas[1].state: unknown state 'up'; expected one of: starting",
        ),
        (lambda d: d["replicas"][1].update(replica="0"), 'replicas[1].replica: expected an integer, got "0"'),
        (lambda d: d["replicas"][1].update(node="gpu-x"), "replicas[1].node: no node named 'gpu-x' in nodes"),
        (
            lambda d: d["replicas"][1].update(replica=0),
            "replicas[1]: instance/node/replica 'qwen-7b/gpu-a/0' is already used by replicas[0]",
        ),
        (
            lambda d: d["replicas"][0].update(last_used="2026-11-23T08:00:00"),
            "replicas[0].last_used: timestamp '2026-11-23T08:00:00' has no time zone; write it in UTC with a trailing Z",
        ),
        (
            lambda d: d["replicas"][0].update(last_used="yesterday"),
            "replicas[0].last_used: 'yesterday' is not an ISO 8601 timestamp",
        ),
        (lambda d: d["replicas"][0].update(address=5), "replicas[0].address: expected a string or null, got 5"),
        (
            lambda d: d["scheduling"][0].update(unsatisfiable_ticks=None),
            "scheduling[0].unsatisfiable_ticks: expected an integer, got null",
        ),
        (
            lambda d: d["scheduling"].append({"instance": "big"}),
            "scheduling[1]: instance 'big' is already used by scheduling[0]",
        ),
    ],
)
def test_errors_name_the_json_path(edit: Callable[[dict[str, Any]], Any], expected: str) -> None:
    assert _error(edit).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        ("[]", "expected a JSON object at the top level, got an array"),
        ('{"nodes": [{"name": "a", "name": "b"}]}', "the key 'name' appears twice in one object"),
        (
            '{"nodes": [{"name": "a", "status": "healthy", "total_vram": Infinity}]}',
            "Infinity is not a JSON number",
        ),
    ],
)
def test_documents_that_are_not_snapshots(text: str, expected: str) -> None:
    with pytest.raises(SnapshotError) as info:
        loads_observed(text)
    assert str(info.value) == expected
