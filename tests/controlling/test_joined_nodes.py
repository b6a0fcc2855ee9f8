"""A node that joined over the bus is observed through its heartbeats, not polled, by a controller that ingests
them; its gRPC path is checked once, when it is new to the controller (or failed before). When the heartbeats
arrive but that path fails, the node is ``unhealthy`` with the gRPC error, and heartbeats do not make it healthy
again: a later probe that gets through does. Against a real ``fleetd agent`` process."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from sqlalchemy import Engine

from fleetd.controlling.distributed import DistributedFleet, Layout
from fleetd.core.observed import NodeStatus
from fleetd.registry.credentials import secret_hash
from fleetd.registry.facade import Registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.transport.security import INSECURE
from tests.agent.remote import agent_process
from tests.conftest import ManualClock

GIB = 1024**3


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_heartbeats_arrive_but_grpc_fails_then_answers(tmp_path: Path, engine: Engine, clock: ManualClock) -> None:
    registry = Registry(engine, clock)
    wrong = closed_address()
    registry.register_node("gpu-j", NodeFacts(gpu_vendor="nvidia", total_vram=8 * GIB), address=wrong)
    registry.approve_node("gpu-j")
    registry.set_node_credential("gpu-j", secret_hash("credential-of-gpu-j"))
    assert registry.joined_nodes() == (("gpu-j", wrong),)
    agent = agent_process("gpu-j", tmp_path / "agents").start()
    layout = [Layout(joined=registry.joined_nodes(), bus=True)]
    fleet = DistributedFleet(registry, INSECURE, layout=lambda: layout[0], fence=lambda: None, sweeps=False)
    try:
        registry.heartbeat([Heartbeat("gpu-j", 8 * GIB, 16 * GIB)])
        (node,) = fleet.observe().nodes
        assert node.status is NodeStatus.UNHEALTHY
        assert node.last_error is not None and wrong in node.last_error
        assert "gpu-j" not in fleet.agents  # nothing is commanded through a path that fails

        registry.heartbeat([Heartbeat("gpu-j", 8 * GIB, 16 * GIB)])  # it beats: still unhealthy, for that reason
        (node,) = registry.snapshot().nodes
        assert (node.status, node.last_error is not None) == (NodeStatus.UNHEALTHY, True)

        layout[0] = Layout(joined=(("gpu-j", agent.address),), bus=True)  # the manifest or a rejoin fixes it
        (node,) = fleet.observe().nodes
        assert (node.status, node.last_error) == (NodeStatus.HEALTHY, None)
        assert "gpu-j" in fleet.agents
        agent.signal(signal.SIGSTOP)  # a hung agent: a poll would time out and mark the node unhealthy
        (node,) = fleet.observe().nodes  # observed by its heartbeats: probed once, never polled
        assert (node.status, node.last_error) == (NodeStatus.HEALTHY, None)
    finally:
        fleet.close()
        agent.stop()
