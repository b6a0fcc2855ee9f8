"""Adoption by an identity fleetd controls: an agent started again finds its replicas by the recorded pid and
process start time and the ``FLEETD_REPLICA`` marker it put in their environment, not by their command line,
which a wrapper script changes (``/bin/sh wrapper.sh``, then whatever it ``exec``s). State files written before
markers existed are still adopted by their argv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.agent.supervisor import Launch
from fleetd.core.desired import BackendType, HealthPolicy, RestartPolicy
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
    yield from marked("adopt")


def wrapper_request(tmp_path: Path, marker: str) -> LaunchRequest:
    """``chat`` with ``command_override: [wrapper]``, a shell script that ``exec``s the fake backend."""
    wrapper = tmp_path / f"{marker}.sh"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_BACKEND}" --model org/{marker} --host "$HOST" --port "$PORT"\n'
    )
    wrapper.chmod(0o755)
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=(
            "  chat:\n"
            "    backend: fake\n"
            f"    model: org/{marker}\n"
            "    vram: 1GiB\n"
            "    restart_delay: 100ms\n"
            "    health: {interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}\n"
            f"    command_override: [{wrapper}]\n"
            "    environment: {FAKE_BACKEND_KIND: vllm}\n"
        ),
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, 0, config_hash(spec, backend))


def running(agent: LocalAgent) -> ReplicaStatus | None:
    (found,) = agent.list_replicas()
    return found if found.state is ReplicaState.RUNNING else None


def test_a_wrapper_script_replica_is_adopted_and_stopped_with_its_group(tmp_path: Path, marker: str) -> None:
    """The wrapper ``exec``s the server, so the process table shows neither the argv fleetd ran nor its tail;
    the next agent adopts it all the same (same pid, no second process, no restart on a taken port), and a
    stop leaves nothing behind."""
    req = wrapper_request(tmp_path, marker)
    first = started_agent(tmp_path / "state")
    second: LocalAgent | None = None
    try:
        first.install_backend(req.backend)
        loaded = first.load(req)
        assert loaded.state is ReplicaState.RUNNING and loaded.pid is not None, loaded.last_error
        assert psutil.Process(loaded.pid).cmdline()[0] != str(tmp_path / f"{marker}.sh"), "the wrapper exec'd"
        first.close()  # the replica keeps running, as after the agent's death
        second = started_agent(tmp_path / "state")
        adopted = wait_for(lambda: running(second), timeout_s=30, what="the replica to be adopted")
        assert adopted.pid == loaded.pid, "adopted, not started again"
        assert adopted.restarts == 0, adopted.last_error
        assert [p.pid for p in processes_with(f"org/{marker}")] == [loaded.pid], "no second process"
        log = (tmp_path / "state" / "agent" / "replicas" / "chat.0.log").read_text()
        assert log.count("fleetd: starting") == 1, log
        second.close(stop_replicas=True)
        assert processes_with(f"org/{marker}") == [], "a stop leaves no process behind"
    finally:
        if second is not None:
            second.close(stop_replicas=True)
        first.close(stop_replicas=True)


def test_a_state_file_without_a_marker_is_adopted_by_its_argv(tmp_path: Path, marker: str) -> None:
    """A state file written before markers existed (no ``marker``, no ``pgid``): the argv rule still adopts."""
    port = 26000 + 50 * (uuid.uuid4().int % 100) + 49
    argv = [
        sys.executable,
        str(FAKE_BACKEND),
        "--model",
        f"org/{marker}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        argv, env={**os.environ, "FAKE_BACKEND_KIND": "vllm"}, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        replicas = tmp_path / "state" / "agent" / "replicas"
        replicas.mkdir(parents=True)
        launch = Launch(
            instance="chat",
            replica=0,
            backend_type=BackendType.VLLM,
            argv=tuple(argv),
            env=(),
            host="127.0.0.1",
            port=port,
            config_hash="h",
            restart=RestartPolicy(restart_delay_ms=100, restart_max_delay_ms=400),
            health=HealthPolicy(interval_ms=100, timeout_ms=300, startup_timeout_ms=20_000),
        )
        start = psutil.Process(process.pid).create_time()
        record = {"launch": asdict(launch), "pid": process.pid, "process_start": start, "restarts": 0}
        (replicas / "chat.0.json").write_text(json.dumps(record))
        agent = started_agent(tmp_path / "state")
        try:
            adopted = wait_for(lambda: running(agent), timeout_s=30, what="the old record's replica to be adopted")
            assert adopted.pid == process.pid and adopted.restarts == 0
        finally:
            agent.close(stop_replicas=True)
        assert process.wait(timeout=10) is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
