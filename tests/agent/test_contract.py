"""The ``AgentClient`` contract: what every implementation must do (DESIGN.md section 3).

Today it runs against the in-process ``LocalAgent``; the gRPC client of the distributed mode will be added to
the ``agent`` fixture's parameters and must pass the same tests. The replicas are the fake backend server
(a vLLM-shaped process), installed as a binary backend, so the suite runs in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import AgentClient, AgentError, LaunchRequest
from tests.agent.support import fake_backend_executable, fake_manifest

INSTANCES = """\
  chat:
    backend: fake
    model: org/chat-model
    vram: 1GiB
    restart_delay: 100ms
    health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}
"""


@pytest.fixture
def desired(tmp_path: Path) -> DesiredState:
    return fake_manifest(fake_backend_executable(tmp_path), instances=INSTANCES)


@pytest.fixture(params=["local"])
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentClient]:
    local = LocalAgent("node-1", tmp_path / "state", stable_after_s=1.0)
    local.start()
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def launch(desired: DesiredState, replica: int = 0) -> LaunchRequest:
    spec = desired.instance("chat")
    backend = desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, replica, config_hash(spec, backend), vram_bytes=1 << 30)


def test_load_before_install_is_refused_with_a_clear_error(agent: AgentClient, desired: DesiredState) -> None:
    with pytest.raises(AgentError, match="backend fake is not installed on node node-1"):
        agent.load(launch(desired))
    assert agent.list_replicas() == ()


def test_install_load_list_unload(agent: AgentClient, desired: DesiredState) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    installed = agent.install_backend(backend)
    assert installed.changed and Path(installed.executable).name == "fake-vllm"
    assert not agent.install_backend(backend).changed

    status = agent.load(launch(desired))
    assert status.state is ReplicaState.RUNNING
    assert status.config_hash == launch(desired).config_hash
    assert status.address is not None and status.pid is not None
    assert psutil.pid_exists(status.pid)
    assert [(r.instance, r.replica) for r in agent.list_replicas()] == [("chat", 0)]

    again = agent.load(launch(desired))  # idempotent: the same process
    assert again.pid == status.pid

    assert agent.unload("chat", 0, grace_s=5)
    assert not _alive(status.pid)
    assert agent.list_replicas() == ()
    assert not agent.unload("chat", 0)  # already gone: no error


def test_replicas_are_listed_in_order_and_restart_replaces_the_process(
    agent: AgentClient, desired: DesiredState
) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    agent.install_backend(backend)
    second = agent.load(launch(desired, 1))
    first = agent.load(launch(desired, 0))
    assert [(r.instance, r.replica) for r in agent.list_replicas()] == [("chat", 0), ("chat", 1)]
    restarted = agent.restart(launch(desired, 1))
    assert restarted.state is ReplicaState.RUNNING
    assert restarted.pid != second.pid
    assert second.pid is not None and not _alive(second.pid)
    assert first.pid is not None and _alive(first.pid)


def test_health_reports_the_node(agent: AgentClient, desired: DesiredState) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    agent.install_backend(backend)
    report = agent.health()
    assert report.node == "node-1"
    assert report.backends == ("fake",)
    assert report.total_ram > 0 or report.total_vram > 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
