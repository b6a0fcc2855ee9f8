"""The observed fingerprint: independent of input order, sensitive to structure, blind to live readings."""

from __future__ import annotations

import dataclasses

from fleetd.core.canonical import digest
from fleetd.core.observed import (
    NodeStatus,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    SchedulingRecord,
)

NODES = (
    ObservedNode("a", NodeStatus.HEALTHY, labels=(("tier", "fast"),), total_vram=8, available_vram=8),
    ObservedNode("b", NodeStatus.PENDING, total_vram=16, available_vram=16),
)
REPLICAS = (
    ObservedReplica("x", "a", 0, ReplicaState.RUNNING, config_hash="h1"),
    ObservedReplica("y", "b", 1, ReplicaState.STARTING, config_hash="h2"),
)
RECORDS = (SchedulingRecord("x", 1), SchedulingRecord("y", 2))
STATE = ObservedState(nodes=NODES, replicas=REPLICAS, scheduling=RECORDS)


def test_fingerprint_and_placement_digest_ignore_input_order() -> None:
    shuffled = ObservedState(nodes=NODES[::-1], replicas=REPLICAS[::-1], scheduling=RECORDS[::-1])
    assert shuffled.fingerprint == STATE.fingerprint
    assert shuffled.placement_digest == STATE.placement_digest


def test_fingerprint_follows_structure_not_readings() -> None:
    relabelled = dataclasses.replace(NODES[0], labels=(("tier", "slow"),))
    assert ObservedState(nodes=(relabelled, NODES[1]), replicas=REPLICAS).fingerprint != STATE.fingerprint
    rehashed = dataclasses.replace(REPLICAS[0], config_hash="h9")
    assert ObservedState(nodes=NODES, replicas=(rehashed, REPLICAS[1]), scheduling=RECORDS).fingerprint != (
        STATE.fingerprint
    )
    busier = dataclasses.replace(NODES[0], available_vram=1, reserved_vram=3)
    used = dataclasses.replace(REPLICAS[0], in_flight=7, last_used="2026-11-23T08:00:00Z")
    same = ObservedState(nodes=(busier, NODES[1]), replicas=(used, REPLICAS[1]), scheduling=RECORDS)
    assert same.fingerprint == STATE.fingerprint


def test_when_a_replica_s_state_changed_is_a_reading_not_structure() -> None:
    dated = dataclasses.replace(REPLICAS[0], state_since="2026-11-23T07:55:00Z")
    assert ObservedState(nodes=NODES, replicas=(dated, REPLICAS[1]), scheduling=RECORDS).fingerprint == (
        STATE.fingerprint
    )


def test_fingerprints_are_the_canonical_digest_of_the_structure() -> None:
    """The fast plain-data digests hash exactly what ``digest`` hashes: saved plans and golden renderings keep
    their fingerprints."""
    placement = tuple(
        (n.name, n.status, n.approved, n.labels, n.backends, n.max_replicas_per_model, n.gpu_vendor, n.total_vram)
        for n in NODES
    )
    assert STATE.placement_digest == digest(placement)
    structure = sorted((r.instance, r.node, r.replica, r.state, r.address, r.config_hash) for r in REPLICAS)
    assert STATE.fingerprint == digest((STATE.placement_digest, structure, RECORDS))
