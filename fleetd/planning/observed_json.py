"""The observed-state snapshot format: what ``fleetd status --format json`` writes and ``fleetd plan --observed``
reads (architecture.md §5).

```json
{"nodes": [{"name": "gpu-a", "status": "healthy", "approved": true, "labels": {"zone": "eu-1"},
            "gpu_vendor": "nvidia", "total_vram": 85899345920, "available_vram": 85899345920, "reserved_vram": 0,
            "total_ram": 0, "available_ram": 0, "max_replicas_per_model": 1, "backends": ["llama-cpp"]}],
 "replicas": [{"instance": "qwen-7b", "node": "gpu-a", "replica": 0, "state": "running", "address": "127.0.0.1:8081",
               "config_hash": "sha256:…", "vram_bytes": 6442450944, "in_flight": 0,
               "last_used": "2026-11-23T08:00:00Z", "restarts": 0, "last_error": null,
               "state_since": "2026-11-23T07:55:00Z"}],
 "scheduling": [{"instance": "big", "unsatisfiable_ticks": 3, "cooldown_until": "2026-11-23T08:05:00Z",
                 "capacity": "sha256:…"}]}
```

Writing emits every field; a replica's ``state_since`` (when its state last changed) only when it is known,
since a registry from before it was kept does not know it; a node's ``last_error`` and ``missing_models`` (the
model paths its agent said it does not have, a plan-time reading) only when there are some. Reading is meant for
snapshots written by hand for CI as well, so only identities are required (a node's ``name`` and ``status``; a replica's ``instance``,
``node``, ``replica`` and ``state``; a record's ``instance``); every other field (``state_since`` included)
defaults to the ``ObservedNode`` / ``ObservedReplica`` default, and ``scheduling`` may be left out.
``approved`` defaults by status: a node only leaves ``registering`` and ``pending`` by being approved, so it
defaults to ``false`` for those two and ``true`` for every other status (``healthy``, ``unhealthy``,
``draining``, ``offline``).

Reading is strict otherwise: an unknown field, a wrong type, a negative size, a timestamp without a time zone,
two nodes of one name, two replicas of one identity or a replica on a node the snapshot does not list (the
registry cannot hold one) is an error whose message names the JSON path: ``nodes[2].total_vram: expected an
integer, got "8GiB"``. Nodes, labels, backends, replicas and records are sorted canonically on the way in,
so the observed fingerprint does not depend on the order of the file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)
from fleetd.core.timestamps import ms_from_iso
from fleetd.planning.json_reading import JsonShapeError, ObjectReader, join, parse_json

UNAPPROVED_STATUSES = frozenset({NodeStatus.REGISTERING, NodeStatus.PENDING})
"""Statuses whose nodes default to ``approved: false`` when the snapshot does not say."""


class SnapshotError(JsonShapeError):
    """An observed-state snapshot that cannot be read; the message names the JSON path."""


def canonical_observed(observed: ObservedState) -> ObservedState:
    """The same state with nodes, labels, backends, replicas and records in canonical order."""
    nodes = tuple(
        sorted(
            (
                replace(n, labels=tuple(sorted(n.labels)), backends=tuple(sorted(n.backends)))
                for n in observed.nodes
            ),
            key=lambda n: n.name,
        )
    )
    replicas = tuple(sorted(observed.replicas, key=lambda r: (r.instance, r.node, r.replica)))
    scheduling = tuple(sorted(observed.scheduling, key=lambda s: s.instance))
    return ObservedState(nodes=nodes, replicas=replicas, scheduling=scheduling)


def observed_document(observed: ObservedState) -> dict[str, Any]:
    state = canonical_observed(observed)
    return {
        "nodes": [
            {
                "name": n.name,
                "status": n.status.value,
                "approved": n.approved,
                "labels": dict(n.labels),
                "gpu_vendor": n.gpu_vendor,
                "total_vram": n.total_vram,
                "available_vram": n.available_vram,
                "reserved_vram": n.reserved_vram,
                "total_ram": n.total_ram,
                "available_ram": n.available_ram,
                "max_replicas_per_model": n.max_replicas_per_model,
                "backends": list(n.backends),
                **({"last_error": n.last_error} if n.last_error is not None else {}),
                **({"missing_models": sorted(n.missing_models)} if n.missing_models else {}),
            }
            for n in state.nodes
        ],
        "replicas": [_replica_document(r) for r in state.replicas],
        "scheduling": [
            {
                "instance": s.instance,
                "unsatisfiable_ticks": s.unsatisfiable_ticks,
                "cooldown_until": s.cooldown_until,
                "capacity": s.capacity,
                **({"reasons": [list(pair) for pair in s.reasons]} if s.reasons else {}),
            }
            for s in state.scheduling
        ],
    }


def _replica_document(r: ObservedReplica) -> dict[str, Any]:
    document: dict[str, Any] = {
        "instance": r.instance,
        "node": r.node,
        "replica": r.replica,
        "state": r.state.value,
        "address": r.address,
        "config_hash": r.config_hash,
        "vram_bytes": r.vram_bytes,
        "in_flight": r.in_flight,
        "last_used": r.last_used,
        "restarts": r.restarts,
        "last_error": r.last_error,
    }
    if r.state_since is not None:
        document["state_since"] = r.state_since
    return document


def dumps_observed(observed: ObservedState) -> str:
    return json.dumps(observed_document(observed), indent=2, ensure_ascii=False) + "\n"


def loads_observed(text: str) -> ObservedState:
    """Read a snapshot; raises ``SnapshotError`` naming the JSON path of the first problem."""
    return observed_from_document(parse_json(text, SnapshotError))


def observed_from_document(data: Any) -> ObservedState:
    top = ObjectReader(data, "", SnapshotError)
    nodes = [_node(item, join("nodes", i)) for i, item in enumerate(top.array("nodes"))]
    replicas = [_replica(item, join("replicas", i)) for i, item in enumerate(top.array("replicas", []))]
    records = [_record(item, join("scheduling", i)) for i, item in enumerate(top.array("scheduling", []))]
    top.raw("status", None)  # `fleetd status --format json` adds sync/health for people; a plan does not read it
    top.finish()
    _refuse_duplicates("nodes", [n.name for n in nodes], "name")
    _refuse_duplicates("replicas", [(r.instance, r.node, r.replica) for r in replicas], "instance/node/replica")
    _refuse_duplicates("scheduling", [s.instance for s in records], "instance")
    names = {n.name for n in nodes}
    for index, replica in enumerate(replicas):
        if replica.node not in names:
            raise SnapshotError(join(join("replicas", index), "node"), f"no node named {replica.node!r} in nodes")
    return canonical_observed(
        ObservedState(nodes=tuple(nodes), replicas=tuple(replicas), scheduling=tuple(records))
    )


def _node(data: Any, path: str) -> ObservedNode:
    obj = ObjectReader(data, path, SnapshotError)
    name = obj.string("name")
    status = _enum(obj, "status", NodeStatus)
    approved_raw = obj.raw("approved", status not in UNAPPROVED_STATUSES)
    if not isinstance(approved_raw, bool):
        raise obj.fail("approved", "expected true or false")
    labels = obj.string_map("labels", {})
    backends = obj.strings("backends", [])
    for index, backend in enumerate(backends):
        if backend in backends[:index]:
            raise SnapshotError(join(obj.at("backends"), index), f"{backend!r} is listed twice")
    node = ObservedNode(
        name=name,
        status=status,
        labels=tuple(sorted(labels)),
        gpu_vendor=obj.string("gpu_vendor", "none"),
        total_vram=obj.integer("total_vram", 0, minimum=0),
        available_vram=obj.integer("available_vram", 0, minimum=0),
        reserved_vram=obj.integer("reserved_vram", 0, minimum=0),
        total_ram=obj.integer("total_ram", 0, minimum=0),
        available_ram=obj.integer("available_ram", 0, minimum=0),
        max_replicas_per_model=obj.integer("max_replicas_per_model", 1, minimum=0),
        backends=tuple(sorted(backends)),
        approved=approved_raw,
        last_error=obj.optional_string("last_error"),
        missing_models=frozenset(obj.strings("missing_models", [])),
    )
    obj.finish()
    return node


def _replica(data: Any, path: str) -> ObservedReplica:
    obj = ObjectReader(data, path, SnapshotError)
    replica = ObservedReplica(
        instance=obj.string("instance"),
        node=obj.string("node"),
        replica=obj.integer("replica", minimum=0),
        state=_enum(obj, "state", ReplicaState),
        address=obj.optional_string("address"),
        config_hash=obj.string("config_hash", ""),
        vram_bytes=obj.integer("vram_bytes", 0, minimum=0),
        in_flight=obj.integer("in_flight", 0, minimum=0),
        last_used=_timestamp(obj, "last_used"),
        restarts=obj.integer("restarts", 0, minimum=0),
        last_error=obj.optional_string("last_error"),
        state_since=_timestamp(obj, "state_since"),
    )
    obj.finish()
    return replica


def _record(data: Any, path: str) -> SchedulingRecord:
    obj = ObjectReader(data, path, SnapshotError)
    record = SchedulingRecord(
        instance=obj.string("instance"),
        unsatisfiable_ticks=obj.integer("unsatisfiable_ticks", 0, minimum=0),
        cooldown_until=_timestamp(obj, "cooldown_until"),
        capacity=obj.string("capacity", ""),
        reasons=_reason_pairs(obj.array("reasons", []), obj.at("reasons")),
    )
    obj.finish()
    return record


def _reason_pairs(items: list[Any], path: str) -> tuple[tuple[str, int], ...]:
    """``[["insufficient_vram", 3], ...]`` as the record's (code, node count) pairs."""
    pairs: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and not isinstance(item[1], bool)
        ):
            raise SnapshotError(join(path, i), "expected [reason, node count]")
        pairs.append((item[0], item[1]))
    return tuple(sorted(pairs))


def _enum(obj: ObjectReader, key: str, enum_type: type[NodeStatus] | type[ReplicaState]) -> Any:
    text = obj.string(key)
    try:
        return enum_type(text)
    except ValueError:
        choices = ", ".join(member.value for member in enum_type)
        raise obj.fail(key, f"unknown {key} {text!r}; expected one of: {choices}") from None


def _timestamp(obj: ObjectReader, key: str) -> str | None:
    text = obj.optional_string(key)
    if text is not None:
        try:
            ms_from_iso(text)
        except ValueError as exc:
            problem = str(exc) if "time zone" in str(exc) else f"{text!r} is not an ISO 8601 timestamp"
            raise obj.fail(key, f'{problem} (e.g. "2026-11-23T08:00:00Z")') from None
    return text


def _refuse_duplicates(section: str, keys: list[Any], what: str) -> None:
    first: dict[Any, int] = {}
    for index, key in enumerate(keys):
        if key in first:
            shown = "/".join(str(k) for k in key) if isinstance(key, tuple) else str(key)
            raise SnapshotError(
                join(section, index), f"{what} {shown!r} is already used by {section}[{first[key]}]"
            )
        first[key] = index
