"""A replica is its whole process group: what its leader started goes with it. A child that ignores SIGTERM does
not outlive a stop whose leader exited at once, nor a leader that crashed; the group is found by the id recorded
at the start, and only its processes that carry the replica's marker are killed."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import LaunchRequest, ReplicaStatus
from tests.agent.support import (
    FAKE_BACKEND,
    fake_backend_executable,
    fake_manifest,
    marked,
    processes_with,
    started_agent,
    wait_for,
)


@pytest.fixture
def marker() -> Iterator[str]:
    yield from marked("groups")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    local = started_agent(tmp_path / "state")
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def request(tmp_path: Path, marker: str) -> LaunchRequest:
    """``chat`` run by a wrapper that starts a child ignoring SIGTERM, then ``exec``s the fake backend."""
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"(trap '' TERM; exec \"{sys.executable}\" -c 'import time; time.sleep(600)' org/{marker}-child) &\n"
        f'exec "{sys.executable}" "{FAKE_BACKEND}" --model org/{marker} --host "$HOST" --port "$PORT"\n'
    )
    wrapper.chmod(0o755)
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=(
            "  chat:\n"
            "    backend: fake\n"
            f"    model: org/{marker}\n"
            "    vram: 1GiB\n"
            "    restart_delay: 5s\n"
            "    health: {interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}\n"
            f"    command_override: [{wrapper}]\n"
            "    environment: {FAKE_BACKEND_KIND: vllm}\n"
        ),
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, 0, config_hash(spec, backend))


def alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie: no; the closed agent's ``Popen`` never reaps it)."""
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def loaded(agent: LocalAgent, tmp_path: Path, marker: str) -> ReplicaStatus:
    req = request(tmp_path, marker)
    agent.install_backend(req.backend)
    status = agent.load(req)
    assert status.state is ReplicaState.RUNNING and status.pid is not None, status.last_error
    wait_for(lambda: processes_with(f"org/{marker}-child"), timeout_s=10, what="the wrapper's child to run")
    return status


def test_a_stop_kills_the_child_that_ignores_sigterm(agent: LocalAgent, tmp_path: Path, marker: str) -> None:
    loaded(agent, tmp_path, marker)
    assert agent.unload("chat", 0, grace_s=1)
    wait_for(
        lambda: not processes_with(f"org/{marker}-child"), timeout_s=10, what="the child to be gone after the stop"
    )


def test_a_crashed_leader_takes_its_group_with_it(agent: LocalAgent, tmp_path: Path, marker: str) -> None:
    first = loaded(agent, tmp_path, marker)
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)  # the leader only: its child stays in the group
    wait_for(
        lambda: not processes_with(f"org/{marker}-child"),
        timeout_s=10,
        what="the child to be gone after the crash",
    )
    (now,) = agent.list_replicas()
    assert "killed by SIGKILL" in (now.last_error or "")


def test_an_agent_started_again_clears_the_group_of_a_leader_that_died_meanwhile(
    agent: LocalAgent, tmp_path: Path, marker: str
) -> None:
    first = loaded(agent, tmp_path, marker)
    assert first.pid is not None
    agent.close()  # the replica keeps running, as after the agent's death
    os.kill(first.pid, signal.SIGKILL)  # then its leader dies while no agent watches; its child stays
    wait_for(lambda: not alive(first.pid), timeout_s=10, what="the leader to be gone")
    assert processes_with(f"org/{marker}-child"), "the child outlived its leader"
    again = started_agent(tmp_path / "state")
    try:
        wait_for(
            lambda: not processes_with(f"org/{marker}-child"),
            timeout_s=10,
            what="the dead leader's child to be gone once an agent is back",
        )
    finally:
        again.close(stop_replicas=True)
