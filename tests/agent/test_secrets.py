"""Secrets sent with a load (architecture.md §3): the replica's process gets the value, and it stays in the
agent's memory: in no state file, no log, no argv. The supervisor's own restarts reuse it; a stop drops it,
and an agent started again never had it, so it falls back to its own environment and says what is missing."""

from __future__ import annotations

import os
import signal
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.agent.ports import PortAllocator
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import LaunchRequest, ReplicaStatus
from tests.agent.support import fake_backend_executable, fake_manifest, kill_all, wait_for

NAME = "FLEETD_TEST_SECRET_X"
VALUE = "s3cret-value"
MISSING = f"environment variable {NAME} was not sent by the controller and is not set on this node"


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique marker in the model of this test's replicas; whatever carries it is killed afterwards."""
    value = f"secrets-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        kill_all(value)


def request(tmp_path: Path, marker: str) -> LaunchRequest:
    """The ``chat`` instance, whose ``TOKEN`` is ``${env:NAME}``, with ``marker`` in its model."""
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=(
            "  chat:\n"
            "    backend: fake\n"
            f"    model: org/{marker}\n"
            "    vram: 1GiB\n"
            "    restart_delay: 100ms\n"
            "    health: {interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}\n"
            f"    environment: {{TOKEN: '${{env:{NAME}}}'}}\n"
        ),
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, 0, config_hash(spec, backend))


def started_agent(tmp_path: Path, req: LaunchRequest) -> LocalAgent:
    """An agent whose ports come from a random block of 50: every agent's default range starts at 18000, so
    test runs side by side on one machine would otherwise give two replicas one port, and one agent's probe
    would find the other's server healthy while its own replica died of "address already in use"."""
    first = 24000 + 50 * (uuid.uuid4().int % 100)
    ports = PortAllocator(first, first + 49)
    agent = LocalAgent("node-1", tmp_path / "state", ports=ports, stable_after_s=2.0)
    agent.start()
    agent.install_backend(req.backend)
    return agent


@pytest.fixture
def agent(tmp_path: Path, marker: str) -> Iterator[LocalAgent]:
    assert NAME not in os.environ, f"unset {NAME} to run this test"
    local = started_agent(tmp_path, request(tmp_path, marker))
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def status(agent: LocalAgent) -> ReplicaStatus:
    (found,) = agent.list_replicas()
    return found


def in_state(agent: LocalAgent, state: ReplicaState) -> ReplicaStatus | None:
    found = status(agent)
    return found if found.state is state else None


def assert_nowhere_but_the_process(state: Path, pid: int) -> None:
    files = [path for path in state.rglob("*") if path.is_file()]
    assert any(path.suffix == ".json" for path in files), "the state file exists"
    leaked = [path for path in files if VALUE.encode() in path.read_bytes()]
    assert leaked == []
    assert not any(VALUE in part for part in psutil.Process(pid).cmdline())


def test_a_sent_secret_reaches_the_process_and_no_file_even_across_a_restart(
    agent: LocalAgent, tmp_path: Path, marker: str
) -> None:
    first = agent.load(request(tmp_path, marker), secrets={NAME: VALUE})
    assert first.state is ReplicaState.RUNNING, first.last_error
    assert first.pid is not None
    assert psutil.Process(first.pid).environ()["TOKEN"] == VALUE
    assert_nowhere_but_the_process(tmp_path / "state", first.pid)
    assert VALUE not in repr(agent.list_replicas())

    os.kill(first.pid, signal.SIGKILL)

    def running_again() -> ReplicaStatus | None:
        now = status(agent)
        return now if now.state is ReplicaState.RUNNING and now.pid not in (None, first.pid) else None

    again = wait_for(running_again, timeout_s=15, what="the supervisor to restart the replica")
    assert again.pid is not None
    assert psutil.Process(again.pid).environ()["TOKEN"] == VALUE, "the restart reused the sent value"
    assert_nowhere_but_the_process(tmp_path / "state", again.pid)


def test_without_the_secret_the_replica_fails_saying_what_is_missing(
    agent: LocalAgent, tmp_path: Path, marker: str
) -> None:
    failed = agent.load(request(tmp_path, marker))
    assert failed.state is ReplicaState.FAILED
    assert failed.last_error == MISSING


def test_a_stop_drops_the_sent_secret(agent: LocalAgent, tmp_path: Path, marker: str) -> None:
    assert agent.load(request(tmp_path, marker), secrets={NAME: VALUE}).state is ReplicaState.RUNNING
    assert agent.unload("chat", 0, grace_s=5)
    again = agent.load(request(tmp_path, marker))
    assert (again.state, again.last_error) == (ReplicaState.FAILED, MISSING)
    restarted = agent.restart(request(tmp_path, marker), secrets={NAME: VALUE})
    assert restarted.state is ReplicaState.RUNNING, restarted.last_error
    assert restarted.pid is not None
    assert psutil.Process(restarted.pid).environ()["TOKEN"] == VALUE


def test_an_agent_started_again_has_no_sent_secret_for_its_restarts(tmp_path: Path, marker: str) -> None:
    """The value lived in the first agent's memory: the second adopts the process but cannot start it again."""
    assert NAME not in os.environ
    req = request(tmp_path, marker)
    first = started_agent(tmp_path, req)
    try:
        loaded = first.load(req, secrets={NAME: VALUE})
        assert loaded.state is ReplicaState.RUNNING and loaded.pid is not None, loaded.last_error
        first.close()  # the replica keeps running, as after the agent's death
        second = started_agent(tmp_path, req)
        try:
            adopted = wait_for(
                lambda: in_state(second, ReplicaState.RUNNING), timeout_s=15, what="the replica to be adopted"
            )
            assert adopted.pid == loaded.pid, "adopted, not started again"
            os.kill(loaded.pid, signal.SIGKILL)
            failed = wait_for(
                lambda: in_state(second, ReplicaState.FAILED), timeout_s=15, what="the restart to fail"
            )
            assert failed.last_error == MISSING
        finally:
            second.close(stop_replicas=True)
    finally:
        first.close(stop_replicas=True)


def test_a_load_of_an_adopted_replica_gives_its_restarts_the_value_again(tmp_path: Path, marker: str) -> None:
    """The controller's next load of a replica that already runs (same config) leaves the process alone and
    hands the agent the value for the replica's next restart."""
    req = request(tmp_path, marker)
    first = started_agent(tmp_path, req)
    try:
        loaded = first.load(req, secrets={NAME: VALUE})
        assert loaded.state is ReplicaState.RUNNING and loaded.pid is not None, loaded.last_error
        first.close()
        second = started_agent(tmp_path, req)
        try:
            wait_for(
                lambda: in_state(second, ReplicaState.RUNNING), timeout_s=15, what="the replica to be adopted"
            )
            same = second.load(req, secrets={NAME: VALUE})
            assert same.pid == loaded.pid, "a load of a running replica starts nothing"
            os.kill(loaded.pid, signal.SIGKILL)

            def restarted() -> ReplicaStatus | None:
                now = status(second)
                return now if now.state is ReplicaState.RUNNING and now.pid not in (None, loaded.pid) else None

            again = wait_for(restarted, timeout_s=15, what="the supervisor to restart the replica")
            assert again.pid is not None
            assert psutil.Process(again.pid).environ()["TOKEN"] == VALUE
        finally:
            second.close(stop_replicas=True)
    finally:
        first.close(stop_replicas=True)


def test_a_secret_the_backend_prints_as_it_fails_is_scrubbed_from_what_fleetd_shows(
    tmp_path: Path, marker: str
) -> None:
    """The replica's own log keeps what it printed (readable by this user only); the tail that becomes
    ``last_error`` (and from there the registry, ``status``, ``/status`` and the serve log) shows ``***``."""
    script = tmp_path / f"{marker}.sh"
    script.write_text(f'#!/bin/sh\necho "error: token $TOKEN rejected ({marker})"\nexit 3\n')
    script.chmod(0o755)
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=(
            "  chat:\n"
            "    backend: fake\n"
            f"    model: org/{marker}\n"
            "    vram: 1GiB\n"
            "    max_restarts: 0\n"
            f"    command_override: [{script}]\n"
            f"    environment: {{TOKEN: '${{env:{NAME}}}'}}\n"
        ),
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    req = LaunchRequest(spec, backend, 0, config_hash(spec, backend))
    local = started_agent(tmp_path, req)
    try:
        local.load(req, secrets={NAME: VALUE}, timeout_s=0.01)
        failed = wait_for(lambda: in_state(local, ReplicaState.FAILED), timeout_s=20, what="the replica to fail")
        assert failed.last_error is not None
        assert "error: token *** rejected" in failed.last_error
        assert VALUE not in failed.last_error and not any(VALUE in line for line in failed.log_tail)
        log = tmp_path / "state" / "agent" / "replicas" / "chat.0.log"
        assert VALUE in log.read_text()  # the replica's own output, as it wrote it
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        local.close(stop_replicas=True)
