"""The ``AgentClient`` contract: what every implementation must do (architecture.md §3).

It runs against the in-process ``LocalAgent`` (real processes: the fake backend server, a vLLM-shaped process,
installed as a binary backend, so the suite runs in seconds), against the executor tests' ``FakeAgent`` (its
"processes" are pids it tracks), and against ``GrpcAgentClient`` talking real gRPC to a real ``fleetd agent``
process on loopback. ``alive(pid)`` asks each implementation's own notion of a running process: the OS for the
local and remote agents, the fake's process table for the fake. ``say(status, text)`` makes a replica write a
line to its output: a request to the fake backend (which logs each request it gets), or the fake's own knob.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.tools.tiny_gguf import write_tiny_model
from fleetd.transport.agent_api import (
    AgentClient,
    AgentError,
    CallerFence,
    LaunchRequest,
    LogStream,
    ReplicaLogReader,
    ReplicaNotFound,
    ReplicaStatus,
)
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE
from tests.agent.remote import agent_process
from tests.agent.support import fake_backend_executable, fake_manifest
from tests.executing.fake_agent import CallLog, FakeAgent

TINY_MODEL_ESTIMATE = 256 * 1024**2 + 4096
"""What the fake answers for the tiny model: the local agent's estimate is of this order (overhead dominates)."""

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


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    write_tiny_model(path)
    return path


@dataclass(frozen=True)
class Subject:
    agent: AgentClient
    alive: Callable[[int], bool]
    logs: ReplicaLogReader
    say: Callable[[ReplicaStatus, str], None]


@pytest.fixture(params=["local", "fake", "grpc"])
def subject(request: pytest.FixtureRequest, tmp_path: Path, tiny_model: Path) -> Iterator[Subject]:
    if request.param == "fake":
        fake = FakeAgent("node-1", CallLog(), models={str(tiny_model): TINY_MODEL_ESTIMATE})

        def write(status: ReplicaStatus, text: str) -> None:
            fake.write_output(status.instance, status.replica, f"{text}\n".encode())

        yield Subject(fake, lambda pid: pid in fake.processes, fake, write)
        return
    if request.param == "grpc":
        yield from _remote_subject(tmp_path)
        return
    local = LocalAgent("node-1", tmp_path / "state", stable_after_s=1.0)
    local.start()
    try:
        yield Subject(local, _alive, local, _request)
    finally:
        local.close(stop_replicas=True)


@pytest.fixture
def agent(subject: Subject) -> AgentClient:
    return subject.agent


def launch(desired: DesiredState, replica: int = 0) -> LaunchRequest:
    spec = desired.instance("chat")
    backend = desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, replica, config_hash(spec, backend), vram_bytes=1 << 30)


def test_load_before_install_is_refused_with_a_clear_error(agent: AgentClient, desired: DesiredState) -> None:
    with pytest.raises(AgentError, match="backend fake is not installed on node node-1"):
        agent.load(launch(desired))
    assert agent.list_replicas() == ()


def test_install_load_list_unload(subject: Subject, agent: AgentClient, desired: DesiredState) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    installed = agent.install_backend(backend)
    assert installed.changed and Path(installed.executable).name == "fake-vllm"
    assert not agent.install_backend(backend).changed

    status = agent.load(launch(desired))
    assert status.state is ReplicaState.RUNNING
    assert status.config_hash == launch(desired).config_hash
    assert status.address is not None and status.pid is not None
    assert subject.alive(status.pid)
    assert [(r.instance, r.replica) for r in agent.list_replicas()] == [("chat", 0)]

    again = agent.load(launch(desired))  # idempotent: the same process
    assert again.pid == status.pid

    assert agent.unload("chat", 0, grace_s=5)
    assert not subject.alive(status.pid)
    assert agent.list_replicas() == ()
    assert not agent.unload("chat", 0)  # already gone: no error


def test_replicas_are_listed_in_order_and_restart_replaces_the_process(
    subject: Subject, agent: AgentClient, desired: DesiredState
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
    assert second.pid is not None and not subject.alive(second.pid)
    assert first.pid is not None and subject.alive(first.pid)


def test_health_reports_the_node(agent: AgentClient, desired: DesiredState) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    agent.install_backend(backend)
    report = agent.health()
    assert report.node == "node-1"
    assert report.backends == ("fake",)
    assert report.total_ram > 0 or report.total_vram > 0


def test_estimate_reads_the_model_on_the_node(agent: AgentClient, desired: DesiredState, tiny_model: Path) -> None:
    spec = desired.instance("chat")
    assert spec is not None
    here = dataclasses.replace(spec, model=str(tiny_model), vram_bytes=None)
    size = agent.estimate(here)
    assert size > tiny_model.stat().st_size  # weights, KV cache and the runtime's overhead
    assert agent.estimate(here) == size


def test_estimate_of_a_model_not_on_the_node_names_it(
    agent: AgentClient, desired: DesiredState, tmp_path: Path
) -> None:
    spec = desired.instance("chat")
    assert spec is not None
    missing = dataclasses.replace(spec, model=str(tmp_path / "nowhere.gguf"), vram_bytes=None)
    with pytest.raises(AgentError, match=r"node node-1: cannot estimate the VRAM of chat: .*nowhere\.gguf"):
        agent.estimate(missing)


def test_replica_logs_give_the_last_lines_then_follow_what_is_written_next(
    subject: Subject, agent: AgentClient, desired: DesiredState
) -> None:
    backend = desired.backend("fake")
    assert backend is not None
    agent.install_backend(backend)
    status = agent.load(launch(desired))
    subject.say(status, "marker-one")
    tail = b"".join(subject.logs.replica_logs("chat", 0, tail_lines=50, follow=False))
    assert b"marker-one" in tail
    assert 0 < tail.count(b"\n") <= 50
    assert b"".join(subject.logs.replica_logs("chat", 0, tail_lines=0, follow=False)) == b""

    follower = subject.logs.replica_logs("chat", 0, tail_lines=0, follow=True)
    try:
        next(follower)  # the first chunk (new output, or an empty one): the follower has its place in the log
        subject.say(status, "marker-two")
        assert b"marker-one" not in read_until(follower, b"marker-two")
    finally:
        follower.close()


def test_replica_logs_of_a_replica_the_node_does_not_have_name_it(subject: Subject) -> None:
    with pytest.raises(ReplicaNotFound, match=r"^node node-1 has no replica chat/3$"):
        b"".join(subject.logs.replica_logs("chat", 3, tail_lines=10, follow=False))
    with pytest.raises(ReplicaNotFound, match=r"has no replica \.\./chat/0"):
        b"".join(subject.logs.replica_logs("../chat", 0, tail_lines=10, follow=False))


def read_until(chunks: LogStream, marker: bytes, timeout_s: float = 20.0) -> bytes:
    """Chunks until ``marker`` has come; every implementation yields at least every second or so, so the
    deadline is checked even when nothing comes."""
    deadline, seen = time.monotonic() + timeout_s, b""
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} did not come within {timeout_s} s; got {seen[-500:]!r}"
        seen += next(chunks)
    return seen


def _request(status: ReplicaStatus, text: str) -> None:
    """Make the fake backend write a line to its output: it logs every request it gets, path and query."""
    assert status.address is not None
    with urllib.request.urlopen(f"http://{status.address}/v1/models?{text}", timeout=10) as response:
        assert response.status == 200


def test_missing_models_names_the_absent_files_only(agent: AgentClient, tiny_model: Path, tmp_path: Path) -> None:
    absent = str(tmp_path / "nowhere.gguf")
    asked = [str(tiny_model), absent, "org/chat-model"]  # a repository id is no file: never missing
    assert agent.missing_models(asked) == frozenset({absent})
    assert agent.missing_models([str(tiny_model)]) == frozenset()
    assert agent.missing_models([]) == frozenset()


def _remote_subject(tmp_path: Path) -> Iterator[Subject]:
    remote = agent_process("node-1", tmp_path / "agents").start()
    client = GrpcAgentClient("node-1", remote.address, INSECURE, fence=lambda: CallerFence(1, "contract"))
    try:
        yield Subject(client, _alive, client, _request)
    finally:
        for replica in client.list_replicas():
            client.unload(replica.instance, replica.replica, grace_s=5)
        client.close()
        assert remote.stop() == 0, remote.log()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
