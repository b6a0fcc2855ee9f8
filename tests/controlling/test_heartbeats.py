"""Heartbeats from agents to the registry: signed by the node's key, checked and counted when dropped, written
in batches, and a cycle asked for only when what the planner sees changed. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import hmac
import json

import pytest
from sqlalchemy import Engine

from fleetd.agent.heartbeats import HeartbeatSender
from fleetd.controlling.heartbeats import HeartbeatIngest, registry_all_keys, registry_keys
from fleetd.core.observed import NodeStatus, ReplicaState
from fleetd.registry import replicas
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.transport.agent_api import NodeReport, ReplicaStatus
from fleetd.transport.bus_messages import credential_hash, heartbeat_subject, node_key
from fleetd.transport.heartbeat_wire import (
    Beat,
    HeartbeatMessage,
    ReplicaSummary,
    decode_heartbeat,
    encode_heartbeat,
)
from tests.conftest import ManualClock

GIB = 1024**3
KEYS = {"gpu-a": node_key("credential-of-gpu-a"), "gpu-b": node_key("credential-of-gpu-b")}


@pytest.fixture
def registry(engine: Engine, clock: ManualClock) -> Registry:
    registry = Registry(engine, clock)
    for name in KEYS:
        registry.register_node(name, NodeFacts(gpu_vendor="nvidia", total_vram=24 * GIB, available_vram=24 * GIB))
        registry.approve_node(name)
    return registry


def beat(
    node: str,
    seq: int,
    *,
    free: int = 20 * GIB,
    state: ReplicaState = ReplicaState.RUNNING,
    in_flight: int = 0,
    boot: str = "boot-1",
    backends: tuple[str, ...] = ("llama",),
) -> HeartbeatMessage:
    replica = ReplicaSummary(
        "chat", 0, state, "sha256:abc", "10.0.0.5:18000", in_flight=in_flight, vram_bytes=4 * GIB
    )
    return HeartbeatMessage(
        node, seq, boot, 1_795_420_800_000, "nvidia", 24 * GIB, free, 64 * GIB, 32 * GIB, backends, (replica,)
    )


def signed(node: str, body: bytes) -> bytes:
    """A heartbeat envelope around ``body``, signed with the node's key however wrong the body is."""
    signature = hmac.digest(KEYS[node], body, "sha256").hex().encode()
    return b'{"v":2,"node":"' + node.encode() + b'","sig":"' + signature + b'","body":' + body + b"}"


def test_a_beat_round_trips_and_is_signed_over_the_bytes_sent() -> None:
    message = dataclasses.replace(beat("gpu-a", 3, in_flight=2), backends=("llama", "vllm"))
    data = encode_heartbeat(message, KEYS["gpu-a"])
    assert decode_heartbeat(data, KEYS["gpu-a"]) == message
    document = json.loads(data)
    assert (document["v"], document["node"]) == (2, "gpu-a")
    body = data[data.index(b'"body":') + len(b'"body":') : -1]
    assert document["sig"] == hmac.digest(KEYS["gpu-a"], body, "sha256").hex()
    assert b"credential" not in data


def test_a_signed_beat_is_written_and_a_forged_one_is_dropped(registry: Registry) -> None:
    changes: list[int] = []
    ingest = HeartbeatIngest(registry, KEYS.get, on_change=lambda: changes.append(1))
    assert ingest.offer(encode_heartbeat(beat("gpu-a", 1, free=7 * GIB), KEYS["gpu-a"])) is None
    assert ingest.offer(encode_heartbeat(beat("gpu-b", 1, free=1 * GIB), KEYS["gpu-a"])) == "bad_signature"
    assert ingest.flush() == 1
    nodes = {n.name: n for n in registry.snapshot().nodes}
    assert nodes["gpu-a"].available_vram == 7 * GIB
    assert nodes["gpu-b"].available_vram == 24 * GIB  # the forged beat changed nothing
    (replica,) = registry.snapshot().replicas
    assert (replica.instance, replica.node, replica.state, replica.address) == (
        "chat",
        "gpu-a",
        ReplicaState.RUNNING,
        "10.0.0.5:18000",
    )
    assert "llama" in nodes["gpu-a"].backends
    assert changes == [1]
    assert ingest.counters.dropped == {"bad_signature": 1}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (json.dumps({"v": 9, "node": "gpu-a"}).encode(), "version"),
        (json.dumps({"v": 1, "node": "gpu-a", "sig": "00", "seq": 1}).encode(), "version"),  # the old format
        (b'{"v":1,"node":"gpu-a","sig":"' + b"0" * 64 + b'","body":{}}', "version"),
        (encode_heartbeat(beat("gpu-z", 1), node_key("gpu-z")), "unknown_node"),
        (json.dumps({"v": 2, "node": "gpu-a"}).encode(), "unsigned"),
        (json.dumps({"v": 2, "node": "gpu-a", "sig": "00", "body": {}}).encode(), "malformed"),  # not the layout
        (encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]).replace(b'{"v":2,', b'{"v": 2,'), "malformed"),
        (encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]).replace(b'"seq":1,', b'"seq":2,'), "bad_signature"),
        (
            signed("gpu-a", b'{"seq":1,"boot":"b","sent_ms":0,"available_vram":1,"available_ram":1,"live":[]}'),
            "malformed",
        ),
        (
            signed(
                "gpu-a",
                b'{"seq":-1,"boot":"b","sent_ms":0,"available_vram":1,"available_ram":1,"live":[],'
                b'"inventory":{"gpu_vendor":"x","total_vram":1,"total_ram":1,"backends":[],"replicas":[]}}',
            ),
            "malformed",
        ),
        (
            signed(
                "gpu-a",
                b'{"seq":1,"boot":"b","sent_ms":0,"available_vram":1,"available_ram":1,"live":[[0,null]],'
                b'"inventory":{"gpu_vendor":"x","total_vram":1,"total_ram":1,"backends":[],"replicas":[]}}',
            ),
            "malformed",
        ),
        (b" " * (1 << 21), "too_large"),
    ],
)
def test_bad_messages_are_dropped_with_their_reason(registry: Registry, data: bytes, reason: str) -> None:
    ingest = HeartbeatIngest(registry, KEYS.get)
    assert ingest.offer(data) == reason
    assert ingest.flush() == 0
    assert ingest.counters.dropped == {reason: 1}


def test_a_replayed_beat_is_stale_but_a_new_agent_process_starts_over(registry: Registry) -> None:
    ingest = HeartbeatIngest(registry, KEYS.get)
    assert ingest.offer(encode_heartbeat(beat("gpu-a", 5), KEYS["gpu-a"])) is None
    ingest.flush()
    assert ingest.offer(encode_heartbeat(beat("gpu-a", 5), KEYS["gpu-a"])) == "stale"
    assert ingest.offer(encode_heartbeat(beat("gpu-a", 4), KEYS["gpu-a"])) == "stale"
    assert ingest.offer(encode_heartbeat(beat("gpu-a", 1, boot="boot-2"), KEYS["gpu-a"])) is None


def test_one_batch_holds_every_node_and_only_changes_ask_for_a_cycle(
    registry: Registry, clock: ManualClock
) -> None:
    changes: list[int] = []
    ingest = HeartbeatIngest(registry, KEYS.get, on_change=lambda: changes.append(1))
    for seq, node in enumerate(KEYS, start=1):
        ingest.offer(encode_heartbeat(beat(node, seq), KEYS[node]))
    assert ingest.flush() == 2
    assert ingest.counters.batches == 1 and changes == [1]

    ingest.offer(encode_heartbeat(beat("gpu-a", 10, in_flight=3), KEYS["gpu-a"]))  # a live reading only
    ingest.flush()
    assert changes == [1]
    in_flight = {(r.node, r.instance): r.in_flight for r in registry.snapshot().replicas}
    assert in_flight[("gpu-a", "chat")] == 3

    ingest.offer(encode_heartbeat(beat("gpu-a", 11, state=ReplicaState.FAILED), KEYS["gpu-a"]))  # a crash
    ingest.flush()
    assert changes == [1, 1]
    states = {(r.node, r.instance): r.state for r in registry.snapshot().replicas}
    assert states[("gpu-a", "chat")] is ReplicaState.FAILED


def test_a_beat_brings_a_silent_node_back(registry: Registry, clock: ManualClock) -> None:
    ingest = HeartbeatIngest(registry, KEYS.get)
    clock.advance(30_000)
    registry.mark_missed_heartbeats(unhealthy_after_ms=6_000, offline_after_ms=20_000)
    assert {n.name: n.status for n in registry.snapshot().nodes}["gpu-a"] is NodeStatus.OFFLINE
    ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]))
    ingest.flush()
    assert {n.name: n.status for n in registry.snapshot().nodes}["gpu-a"] is NodeStatus.HEALTHY


def test_the_agent_signs_what_the_controller_accepts(registry: Registry) -> None:
    sent: list[tuple[str, bytes]] = []
    report = NodeReport("gpu-a", "nvidia", (), 24 * GIB, 9 * GIB, 64 * GIB, 30 * GIB, "linux-x86_64", ("llama",))
    replica = ReplicaStatus("chat", 0, ReplicaState.RUNNING, "sha256:abc", address="10.0.0.5:18001", pid=42)
    sender = HeartbeatSender(
        "gpu-a",
        KEYS["gpu-a"],
        lambda subject, data: sent.append((subject, data)),
        report=lambda: report,
        replicas=lambda: (replica,),
    )
    sender.send()
    sender.send()
    assert [subject for subject, _ in sent] == [heartbeat_subject("gpu-a")] * 2
    ingest = HeartbeatIngest(registry, KEYS.get)
    assert [ingest.offer(data) for _, data in sent] == [None, None]
    ingest.flush()
    assert {n.name: n.available_vram for n in registry.snapshot().nodes}["gpu-a"] == 9 * GIB
    assert [(r.node, r.address) for r in registry.snapshot().replicas] == [("gpu-a", "10.0.0.5:18001")]


def test_silent_nodes_become_unhealthy_then_lost_unless_most_go_silent_together(
    engine: Engine, clock: ManualClock
) -> None:
    registry = Registry(engine, clock)
    names = ["n1", "n2", "n3", "n4"]
    keys = {name: node_key(name) for name in names}
    for name in names:
        registry.register_node(name, NodeFacts(total_vram=8 * GIB))
        registry.approve_node(name)
    changes: list[int] = []
    ingest = HeartbeatIngest(registry, keys.get, on_change=lambda: changes.append(1))

    def beat_all(seq: int, *, but: tuple[str, ...] = ()) -> None:
        for name in names:
            if name not in but:
                ingest.offer(encode_heartbeat(beat(name, seq), keys[name]))
        ingest.flush()

    def statuses() -> dict[str, NodeStatus]:
        return {n.name: n.status for n in registry.snapshot().nodes}

    beat_all(1)
    clock.advance(7_000)
    beat_all(2, but=("n4",))
    result = ingest.sweep()
    assert (result.unhealthy, result.lost, result.bus_suspect) == (1, 0, False)
    assert statuses()["n4"] is NodeStatus.UNHEALTHY and changes
    clock.advance(14_000)
    beat_all(3, but=("n4",))
    assert ingest.sweep().lost == 1 and statuses()["n4"] is NodeStatus.OFFLINE

    beat_all(4)  # n4 is back
    clock.advance(25_000)  # the bus goes away: everyone is silent
    guarded = ingest.sweep()
    assert guarded.bus_suspect and guarded.lost == 0
    assert set(statuses().values()) == {NodeStatus.UNHEALTHY}
    assert ingest.bus_suspect
    beat_all(5)
    assert not ingest.sweep().bus_suspect and set(statuses().values()) == {NodeStatus.HEALTHY}


def test_a_replica_the_node_no_longer_reports_loses_its_row(registry: Registry) -> None:
    ingest = HeartbeatIngest(registry, KEYS.get)
    ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]))
    ingest.offer(encode_heartbeat(beat("gpu-b", 1), KEYS["gpu-b"]))
    ingest.flush()
    assert len(registry.snapshot().replicas) == 2
    ingest.offer(encode_heartbeat(dataclasses.replace(beat("gpu-a", 2), replicas=()), KEYS["gpu-a"]))
    ingest.flush()
    assert [(r.node, r.instance) for r in registry.snapshot().replicas] == [("gpu-b", "chat")]


def forget(registry: Registry) -> None:
    with registry.engine.begin() as conn:
        replicas.forget(conn, "chat", "gpu-a", 0, now_ms=registry.clock())


def test_rows_another_writer_removed_are_written_again_when_the_beat_may_not_be_trusted(
    registry: Registry,
) -> None:
    """The ingest writes a replica's row only when it changed since this controller's last write; a forget (the
    node was lost) or another controller's writes make that stale: a node back from silence, or a beat whose
    predecessor this controller did not get, is written in full. Beats it coalesced itself are no gap."""
    changes: list[int] = []
    ingest = HeartbeatIngest(registry, KEYS.get, on_change=lambda: changes.append(1))

    def offer(seq: int, sent_s: float) -> None:
        message = dataclasses.replace(beat("gpu-a", seq), sent_ms=1_795_420_800_000 + int(sent_s * 1000))
        assert ingest.offer(encode_heartbeat(message, KEYS["gpu-a"])) is None

    offer(1, 0)
    ingest.flush()
    forget(registry)  # what the forget of a lost node's replica does
    offer(2, 2)
    offer(3, 4)  # two beats in one batch: coalesced, still trusted
    ingest.flush()
    assert registry.snapshot().replicas == ()

    offer(4, 14)  # silent past --unhealthy-after: it comes back
    ingest.flush()
    assert [r.node for r in registry.snapshot().replicas] == ["gpu-a"]
    assert changes == [1, 1]  # back from silence is a change the planner must see

    forget(registry)
    offer(6, 16)  # seq 5 went to another controller
    ingest.flush()
    assert [r.node for r in registry.snapshot().replicas] == ["gpu-a"]


def test_an_unchanged_inventory_is_not_decoded_again_and_a_quiet_change_is_written_without_a_cycle(
    registry: Registry,
) -> None:
    changes: list[int] = []
    flushed: list[Beat] = []
    ingest = HeartbeatIngest(registry, KEYS.get, on_change=lambda: changes.append(1), on_flushed=flushed.extend)
    ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]))
    ingest.flush()
    ingest.offer(encode_heartbeat(beat("gpu-a", 2, free=3 * GIB), KEYS["gpu-a"]))
    ingest.flush()
    first, second = flushed
    assert second.inventory is first.inventory and second.live is first.live  # decoded once, compared by bytes
    assert {n.name: n.available_vram for n in registry.snapshot().nodes}["gpu-a"] == 3 * GIB
    assert changes == [1]

    message = beat("gpu-a", 3)
    grown = dataclasses.replace(message.replicas[0], vram_bytes=6 * GIB, last_error="slow start")
    ingest.offer(encode_heartbeat(dataclasses.replace(message, replicas=(grown,)), KEYS["gpu-a"]))
    ingest.flush()
    assert flushed[-1].inventory is not second.inventory
    (replica,) = registry.snapshot().replicas
    assert (replica.vram_bytes, replica.last_error) == (6 * GIB, "slow start")
    assert changes == [1]  # neither is what the planner decides on: no cycle


def test_the_keys_of_every_node_are_read_at_once_at_start(registry: Registry) -> None:
    asked: list[str] = []

    def one_key(node: str) -> bytes | None:
        asked.append(node)
        return KEYS.get(node)

    ingest = HeartbeatIngest(registry, one_key, all_keys=lambda: {"gpu-a": KEYS["gpu-a"]})
    ingest.start()
    try:
        assert ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"])) is None
        assert ingest.offer(encode_heartbeat(beat("gpu-b", 1), KEYS["gpu-b"])) is None  # registered since
    finally:
        ingest.stop()
    assert asked == ["gpu-b"]
    assert {n.name: n.available_vram for n in registry.snapshot().nodes}["gpu-a"] == 20 * GIB


def test_the_registry_gives_every_node_key_at_once(registry: Registry) -> None:
    registry.set_node_credential("gpu-a", credential_hash("credential-of-gpu-a"))
    assert registry_all_keys(registry)() == {"gpu-a": KEYS["gpu-a"]}
    assert registry_keys(registry)("gpu-a") == KEYS["gpu-a"] and registry_keys(registry)("gpu-b") is None


def test_a_replica_keeps_its_state_since_until_its_state_changes(registry: Registry, clock: ManualClock) -> None:
    ingest = HeartbeatIngest(registry, KEYS.get)

    def since() -> str | None:
        (replica,) = registry.snapshot().replicas
        return replica.state_since

    ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]))
    ingest.flush()
    started = since()
    clock.advance(5_000)
    ingest.offer(encode_heartbeat(beat("gpu-a", 2, backends=("llama", "vllm")), KEYS["gpu-a"]))  # rows rewritten
    ingest.flush()
    assert since() == started and started is not None
    assert {n.name: n.backends for n in registry.snapshot().nodes}["gpu-a"] == ("llama", "vllm")
    clock.advance(5_000)
    ingest.offer(encode_heartbeat(beat("gpu-a", 3, state=ReplicaState.FAILED), KEYS["gpu-a"]))
    ingest.flush()
    assert since() != started


def test_liveness_counts_from_when_a_beat_arrived_not_when_it_was_written(
    registry: Registry, clock: ManualClock
) -> None:
    """A controller behind on its writes must not make a silent node look fresher than it is; and a late write
    of an older beat never moves a node's last heartbeat backwards."""
    ingest = HeartbeatIngest(registry, KEYS.get)
    arrived = clock()
    ingest.offer(encode_heartbeat(beat("gpu-a", 1), KEYS["gpu-a"]))
    clock.advance(10_000)  # the batch is written ten seconds later
    ingest.flush()
    records = {r.name: r for r in registry.node_records()}
    assert records["gpu-a"].last_heartbeat_ms == arrived

    registry.heartbeat([Heartbeat("gpu-a", 1, 1, at_ms=arrived - 5_000)])
    assert {r.name: r for r in registry.node_records()}["gpu-a"].last_heartbeat_ms == arrived
