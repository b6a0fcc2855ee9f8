"""The supervisor's policies on the fake backend: restart after a crash with doubling delays, give up after
``max_restarts`` with the log tail, tell busy from dead, wait out a slow start, and survive its own death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.agent.probing import ProbeOutcome, ProbeResult
from fleetd.agent.supervisor import default_prober, describe_exit
from fleetd.core.desired import BackendType, DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.runtimes.probes import ProbeSpec
from fleetd.transport.agent_api import LaunchRequest, ReplicaStatus
from tests.agent.support import (
    fake_backend_executable,
    fake_manifest,
    kill_all,
    processes_with,
    squatting,
    wait_for,
)


def chat(
    extra: str = "", *, restart_delay: str = "100ms", environment: str = "{}", model: str = "org/chat-model"
) -> str:
    return (
        "  chat:\n"
        "    backend: fake\n"
        f"    model: {model}\n"
        "    vram: 1GiB\n"
        f"    restart_delay: {restart_delay}\n"
        "    restart_max_delay: 400ms\n"
        "    health: {interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}\n"
        f"    environment: {environment}\n" + extra
    )


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    local = LocalAgent("node-1", tmp_path / "state", stable_after_s=2.0)
    local.start()
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def load(agent: LocalAgent, desired: DesiredState, *, timeout_s: float | None = None) -> ReplicaStatus:
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    agent.install_backend(backend)
    return agent.load(LaunchRequest(spec, backend, 0, config_hash(spec, backend)), timeout_s=timeout_s)


def status(agent: LocalAgent) -> ReplicaStatus:
    (found,) = agent.list_replicas()
    return found


def test_sigkill_brings_the_replica_back_after_the_restart_delay(agent: LocalAgent, tmp_path: Path) -> None:
    desired = fake_manifest(fake_backend_executable(tmp_path), instances=chat())
    first = load(agent, desired)
    assert first.state is ReplicaState.RUNNING and first.pid is not None
    os.kill(first.pid, signal.SIGKILL)

    def running_again() -> ReplicaStatus | None:
        now = status(agent)
        return now if now.state is ReplicaState.RUNNING and now.pid != first.pid else None

    back = wait_for(
        running_again,
        timeout_s=15,
        what="the replica to run again after SIGKILL",
    )
    assert back.restarts == 1
    assert back.address == first.address  # the same port: clients keep their address
    assert "killed by SIGKILL" in (back.last_error or "")


def test_replica_events_reach_the_listener(tmp_path: Path) -> None:
    """A start, a crash and the restart after it each tell the listener (``fleetd serve`` runs a cycle on each)."""
    heard: list[tuple[ReplicaState, int]] = []
    local: LocalAgent

    def listener() -> None:
        heard.extend((r.state, r.restarts) for r in local.list_replicas())

    local = LocalAgent("node-1", tmp_path / "state", stable_after_s=2.0, on_replica_change=listener)
    local.start()
    try:
        first = load(local, fake_manifest(fake_backend_executable(tmp_path), instances=chat()))
        assert first.pid is not None
        wait_for(lambda: (ReplicaState.RUNNING, 0) in heard, timeout_s=5, what="the start to be heard")
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: (ReplicaState.RUNNING, 1) in heard, timeout_s=15, what="the restart to be heard")
        crash = heard.index((ReplicaState.STARTING, 1))
        assert crash < heard.index((ReplicaState.RUNNING, 1)), heard
    finally:
        local.close(stop_replicas=True)


def test_a_crash_loop_ends_failed_with_the_last_log_lines(agent: LocalAgent, tmp_path: Path) -> None:
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=chat("    max_restarts: 2\n", environment="{FAKE_BACKEND_CRASH_AFTER_MS: '50'}"),
    )
    load(agent, desired, timeout_s=0.01)

    def failed_now() -> ReplicaStatus | None:
        now = status(agent)
        return now if now.state is ReplicaState.FAILED else None

    failed = wait_for(failed_now, timeout_s=20, what="the crash loop to end")
    assert failed.restarts == 2
    assert "gave up after 2 restarts" in (failed.last_error or "")
    first = (failed.last_error or "").splitlines()[0]
    assert first.startswith("exited with status 1; gave up after 2 restarts: ") and len(first) > 50, first
    assert failed.log_tail, "a failed replica shows its last log lines"
    assert any("fleetd: starting" in line for line in failed.log_tail)


def test_restart_delays_double_up_to_the_cap(agent: LocalAgent, tmp_path: Path) -> None:
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=chat("    max_restarts: 4\n", restart_delay="100ms", environment="{FAKE_BACKEND_NO_BIND: '1'}"),
    )
    started = time.monotonic()
    load(agent, desired, timeout_s=0.01)
    wait_for(lambda: status(agent).state is ReplicaState.FAILED, timeout_s=20, what="the crash loop to end")
    elapsed = time.monotonic() - started
    # Delays 100 + 200 + 400 + 400 ms (capped at restart_max_delay): at least 1.1 s in all.
    assert elapsed >= 1.1
    log = (tmp_path / "state" / "agent" / "replicas" / "chat.0.log").read_text()
    assert log.count("fleetd: starting") == 5
    assert "address already in use" in log


def test_a_hung_backend_is_busy_not_dead(tmp_path: Path) -> None:
    outcomes: list[ProbeOutcome] = []

    def recording(address: str, spec: ProbeSpec, backend_type: BackendType, timeout_s: float) -> ProbeResult:
        result = default_prober(address, spec, backend_type, timeout_s)
        outcomes.append(result.outcome)
        return result

    agent = LocalAgent("node-1", tmp_path / "state", prober=recording)
    agent.start()
    try:
        marker = tmp_path / "hang"
        desired = fake_manifest(
            fake_backend_executable(tmp_path),
            instances=chat(environment=f"{{FAKE_BACKEND_HANG_FILE: '{marker}'}}"),
        )
        first = load(agent, desired)
        assert first.state is ReplicaState.RUNNING
        marker.write_text("1")  # from now on it accepts connections but never answers, like a long generation
        wait_for(lambda: outcomes.count(ProbeOutcome.BUSY) >= 3, timeout_s=15, what="three busy probes")
        now = status(agent)
        assert now.state is ReplicaState.RUNNING, now.last_error  # failure_threshold is 2: busy did not count
        assert now.pid == first.pid
    finally:
        agent.close(stop_replicas=True)


def test_a_slow_start_is_waited_for(agent: LocalAgent, tmp_path: Path) -> None:
    desired = fake_manifest(
        fake_backend_executable(tmp_path), instances=chat(environment="{FAKE_BACKEND_START_DELAY_MS: '800'}")
    )
    started = time.monotonic()
    ready = load(agent, desired)
    assert ready.state is ReplicaState.RUNNING
    assert time.monotonic() - started >= 0.8
    assert ready.restarts == 0


def test_an_agent_killed_and_started_again_adopts_its_replicas(tmp_path: Path) -> None:
    """The agent runs in its own process here, so that SIGKILL kills it for real."""
    executable = fake_backend_executable(tmp_path)
    state = tmp_path / "state"
    script = Path(__file__).with_name("agent_process.py")
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        f"version: 1\nbackends:\n  fake: {{type: vllm, install: {{binary: {executable}}}}}\ninstances:\n"
        + chat(model=f"org/{tmp_path.name}")
    )
    out = tmp_path / "status.txt"

    def run_agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(script), str(state), str(manifest), str(out)])

    def running_pid() -> int | None:
        text = out.read_text() if out.exists() else ""
        parts = text.split()
        return int(parts[1]) if len(parts) == 3 and parts[0] == "running" else None

    first_agent = run_agent()
    try:
        pid = wait_for(running_pid, timeout_s=30, what="the first agent to run the replica")
        first_agent.send_signal(signal.SIGKILL)
        first_agent.wait(timeout=10)
        assert psutil.pid_exists(pid), "the replica outlives its agent"
        out.unlink()
        second_agent = run_agent()
        try:
            adopted = wait_for(running_pid, timeout_s=30, what="the second agent to report the replica")
            assert adopted == pid, "adopted, not started again"
            assert [p.pid for p in processes_with(f"org/{tmp_path.name}")] == [pid], "no duplicate"
        finally:
            second_agent.terminate()
            second_agent.wait(timeout=10)
    finally:
        if first_agent.poll() is None:
            first_agent.kill()
        kill_all(f"org/{tmp_path.name}")


def test_an_exit_is_described_as_an_operator_reads_it() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(-250) == "killed by signal 250"


def test_a_restart_whose_port_was_taken_moves_to_a_free_port(agent: LocalAgent, tmp_path: Path) -> None:
    """Another process binds the replica's port while it is down: the restart takes another port, the state file
    and the reported address follow, and the replica's log says why."""
    desired = fake_manifest(fake_backend_executable(tmp_path), instances=chat(restart_delay="2s"))
    first = load(agent, desired)
    assert first.state is ReplicaState.RUNNING and first.pid is not None and first.address is not None
    port = first.address.rsplit(":", 1)[1]
    os.kill(first.pid, signal.SIGKILL)
    with squatting(first.address):

        def running_elsewhere() -> ReplicaStatus | None:
            now = status(agent)
            return now if now.state is ReplicaState.RUNNING and now.address != first.address else None

        moved = wait_for(running_elsewhere, timeout_s=20, what="the replica to run again on another port")
    assert moved.restarts == 1
    assert f"port {port} is taken by another process; restarting on port" in (moved.last_error or "")
    new_port = moved.address.rsplit(":", 1)[1] if moved.address else ""
    state = json.loads((tmp_path / "state" / "agent" / "replicas" / "chat.0.json").read_text())
    assert state["launch"]["port"] == int(new_port)
    assert new_port in state["launch"]["argv"]  # the process was started with the new port
    log_text = (tmp_path / "state" / "agent" / "replicas" / "chat.0.log").read_text()
    assert f"--- fleetd: port {port} is taken by another process; restarting on port {new_port}" in log_text
