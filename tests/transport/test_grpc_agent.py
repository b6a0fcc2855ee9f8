"""``GrpcAgentClient`` against a real ``fleetd agent`` process: fencing at the agent, the node's identity,
deadlines on a dead or hung node, secrets that reach the replica without touching disk or logs, and the bound
on followed log streams (``fleetd logs -f``).

What every ``AgentClient`` must do is ``tests/agent/test_contract.py`` (which runs over gRPC too); this file is
what only the remote path has.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.agent.service import MAX_FOLLOWERS
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import AgentError, AgentFenced, CallerFence, LaunchRequest, LogStream
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import fake_backend_executable, fake_manifest, wait_for

INSTANCES = """\
  chat:
    backend: fake
    model: org/chat-model
    vram: 1GiB
    environment: {TOKEN: "${env:FLEETD_TEST_CHAT_TOKEN}", MODE: plain}
    health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}
"""
SECRET = "s3cret-token-value-42"


@pytest.fixture
def desired(tmp_path: Path) -> DesiredState:
    return fake_manifest(fake_backend_executable(tmp_path), instances=INSTANCES)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[AgentProcess]:
    agent = agent_process("node-1", tmp_path / "agents").start()
    try:
        yield agent
    finally:
        cleanup = GrpcAgentClient("node-1", agent.address, INSECURE, fence=lambda: CallerFence(10**6, "cleanup"))
        if agent.process is not None and agent.process.poll() is None:
            agent.signal(signal.SIGCONT)
            for replica in cleanup.list_replicas():
                cleanup.unload(replica.instance, replica.replica, grace_s=5)
        cleanup.close()
        agent.stop()


def client(address: str, epoch: int | None, *, node: str = "node-1", **kwargs: object) -> GrpcAgentClient:
    fence = None if epoch is None else CallerFence(epoch, f"controller-{epoch}")
    kwargs.setdefault("environ", {"FLEETD_TEST_CHAT_TOKEN": SECRET})
    return GrpcAgentClient(node, address, INSECURE, fence=lambda: fence, **kwargs)  # type: ignore[arg-type]


def launch(desired: DesiredState, replica: int = 0) -> LaunchRequest:
    spec = desired.instance("chat")
    backend = desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, replica, config_hash(spec, backend), vram_bytes=1 << 30)


def test_a_deposed_controllers_commands_are_refused_even_after_the_agent_restarts(
    remote: AgentProcess, desired: DesiredState
) -> None:
    new, old = client(remote.address, 5), client(remote.address, 3)
    backend = desired.backend("fake")
    assert backend is not None
    new.install_backend(backend)
    running = new.load(launch(desired), timeout_s=None)
    assert running.state is ReplicaState.RUNNING

    with pytest.raises(AgentFenced, match=r"lease epoch 3 is lower than epoch 5 already seen here"):
        old.unload("chat", 0)
    with pytest.raises(AgentFenced, match=r"epoch 3 is lower than epoch 5"):
        old.load(launch(desired, 1))
    assert [(r.replica, r.pid) for r in old.list_replicas()] == [(0, running.pid)]  # reads still answer

    remote.stop()
    remote.start()
    with pytest.raises(AgentFenced, match=r"epoch 3 is lower than epoch 5"):
        client(remote.address, 3).unload("chat", 0)
    assert client(remote.address, 5).list_replicas()[0].pid == running.pid  # adopted, still the same process


def test_a_command_without_a_lease_epoch_is_refused(remote: AgentProcess, desired: DesiredState) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    with pytest.raises(AgentFenced, match="carries no controller lease epoch"):
        client(remote.address, None).install_backend(backend)
    assert client(remote.address, None).health().backends == ()


def test_an_address_that_points_at_another_node_is_refused(remote: AgentProcess) -> None:
    with pytest.raises(AgentError, match="this agent is node node-1, not node-2"):
        client(remote.address, 1, node="node-2").health()


def test_a_dead_address_fails_within_the_deadline_with_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(
        AgentError, match=rf"node node-1 \(\[insecure: no TLS\] {address}\): cannot reach the agent for health"
    ):
        client(address, 1, call_timeout_s=2.0).health()
    assert time.monotonic() - started < 2.0 + 1.0


def test_a_hung_agent_times_out_and_answers_again_after_sigcont(remote: AgentProcess) -> None:
    hung = client(remote.address, 1, call_timeout_s=1.0)
    assert hung.health().node == "node-1"
    remote.signal(signal.SIGSTOP)
    try:
        with pytest.raises(AgentError, match=r"health got no answer within 1 s; the agent may be hung"):
            hung.health()
    finally:
        remote.signal(signal.SIGCONT)
    assert hung.health().node == "node-1"


def test_secret_values_reach_the_replica_and_nothing_else(
    remote: AgentProcess, desired: DesiredState, tmp_path: Path
) -> None:
    controller = client(remote.address, 1, environ={"FLEETD_TEST_CHAT_TOKEN": SECRET})
    backend = desired.backend("fake")
    assert backend is not None
    controller.install_backend(backend)
    status = controller.load(launch(desired))
    assert status.state is ReplicaState.RUNNING and status.pid is not None
    process = psutil.Process(status.pid)
    assert process.environ()["TOKEN"] == SECRET
    assert process.environ()["MODE"] == "plain"
    assert all(SECRET not in part for part in process.cmdline())
    for path in remote.state_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in remote.log()


def test_without_the_value_the_replica_fails_naming_the_variable(
    remote: AgentProcess, desired: DesiredState
) -> None:
    controller = client(remote.address, 1, environ={})
    backend = desired.backend("fake")
    assert backend is not None
    controller.install_backend(backend)
    status = controller.load(launch(desired))
    assert status.state is ReplicaState.FAILED
    assert status.last_error is not None and "FLEETD_TEST_CHAT_TOKEN" in status.last_error


def test_log_followers_are_bounded_and_a_cancelled_one_frees_its_place(
    remote: AgentProcess, desired: DesiredState
) -> None:
    """A follower holds a server thread: past ``MAX_FOLLOWERS`` the agent refuses one, and closing a follower
    cancels its call, which the agent notices at its next poll of the file."""
    reader = client(remote.address, 1)
    backend = desired.backend("fake")
    assert backend is not None
    reader.install_backend(backend)
    assert reader.load(launch(desired)).state is ReplicaState.RUNNING
    followers = [reader.replica_logs("chat", 0, tail_lines=1, follow=True) for _ in range(MAX_FOLLOWERS)]
    for follower in followers:
        assert next(follower)  # the last line: this follower runs on the agent
    with pytest.raises(AgentError, match=rf"node node-1 already streams {MAX_FOLLOWERS} followed logs"):
        next(reader.replica_logs("chat", 0, tail_lines=1, follow=True))
    assert b"".join(reader.replica_logs("chat", 0, tail_lines=1, follow=False))  # a tail is never refused
    followers.pop().close()

    def another() -> LogStream | None:
        follower = reader.replica_logs("chat", 0, tail_lines=1, follow=True)
        try:
            next(follower)
        except AgentError:
            return None
        return follower

    followers.append(wait_for(another, timeout_s=10, what="the cancelled follower's place to be free"))
    for follower in followers:
        follower.close()


def test_logs_asked_of_the_wrong_node_are_refused(remote: AgentProcess) -> None:
    with pytest.raises(AgentError, match="this agent is node node-1, not node-2"):
        next(client(remote.address, None, node="node-2").replica_logs("chat", 0, tail_lines=1, follow=False))
