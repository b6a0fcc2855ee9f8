"""A first end-to-end pass over the registry on both databases (the full suite lives beside it)."""

from __future__ import annotations

from sqlalchemy import Engine

from fleetd.core.observed import NodeStatus
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from tests.conftest import ManualClock

GIB = 1024**3


def test_register_approve_reserve_snapshot(engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    facts = NodeFacts(gpu_vendor="nvidia", total_vram=80 * GIB, available_vram=80 * GIB)
    assert registry.register_node("gpu-a", facts) is NodeStatus.PENDING
    registry.approve_node("gpu-a")
    reservation = registry.reserve("gpu-a", 60 * GIB, "load:x:gpu-a:0", ttl_ms=60_000)
    assert reservation is not None
    assert registry.reserve("gpu-a", 30 * GIB, "load:y:gpu-a:0", ttl_ms=60_000) is None  # 20 GiB left
    registry.heartbeat([Heartbeat("gpu-a", available_vram=80 * GIB, available_ram=0)])
    observed = registry.snapshot()
    [node] = observed.nodes
    assert (node.status, node.reserved_vram, node.free_vram) == (NodeStatus.HEALTHY, 60 * GIB, 20 * GIB)
    assert dict(node.labels)["gpu.vram"] == "80GiB"
