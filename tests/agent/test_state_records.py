"""A replica's state file is written before its process starts: a record that cannot be written (disk full, a
read-only state dir) starts nothing, or stops what it started, and the replica is ``failed`` saying so (and the
supervisor's log says it at level error); an agent that died between the record and the process's pid finds the
process by its marker. The record is made unwritable as root would find it too: a directory in its place."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.agent.local import LocalAgent
from fleetd.agent.supervisor import MARKER_VARIABLE
from fleetd.core.observed import ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.transport.agent_api import LaunchRequest, ReplicaStatus
from tests.agent.support import (
    fake_backend_executable,
    fake_manifest,
    marked,
    processes_with,
    started_agent,
    wait_for,
)


@pytest.fixture
def marker() -> Iterator[str]:
    yield from marked("records")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    local = started_agent(tmp_path / "state")
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def request(tmp_path: Path, marker: str) -> LaunchRequest:
    desired = fake_manifest(
        fake_backend_executable(tmp_path),
        instances=(
            "  chat:\n"
            "    backend: fake\n"
            f"    model: org/{marker}\n"
            "    vram: 1GiB\n"
            "    restart_delay: 100ms\n"
            "    health: {interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}\n"
        ),
    )
    spec, backend = desired.instance("chat"), desired.backend("fake")
    assert spec is not None and backend is not None
    return LaunchRequest(spec, backend, 0, config_hash(spec, backend))


def record_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agent" / "replicas" / "chat.0.json"


def the_replica(agent: LocalAgent) -> ReplicaStatus:
    (found,) = agent.list_replicas()
    return found


def test_an_unwritable_record_starts_no_process_and_fails_the_replica(
    agent: LocalAgent, tmp_path: Path, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    req = request(tmp_path, marker)
    agent.install_backend(req.backend)
    record_path(tmp_path).mkdir(parents=True)  # the atomic rename onto it fails, for root too
    with caplog.at_level(logging.ERROR, logger="fleetd.agent.supervisor"):
        failed = agent.load(req)
    assert failed.state is ReplicaState.FAILED
    assert failed.pid is None
    assert f"cannot write the state file {record_path(tmp_path)}" in (failed.last_error or "")
    assert the_replica(agent).last_error == failed.last_error, "the error stays visible in the replica list"
    assert processes_with(f"org/{marker}") == [], "no process runs untracked"
    assert any(
        r.levelno == logging.ERROR and "cannot write the state file" in r.getMessage() for r in caplog.records
    )
    assert agent.unload("chat", 0), "the failed replica can be unloaded, its record's path notwithstanding"


def test_a_restart_whose_record_cannot_be_written_leaves_no_process(
    agent: LocalAgent, tmp_path: Path, marker: str
) -> None:
    req = request(tmp_path, marker)
    agent.install_backend(req.backend)
    first = agent.load(req)
    assert first.state is ReplicaState.RUNNING and first.pid is not None, first.last_error
    record_path(tmp_path).unlink()
    record_path(tmp_path).mkdir()
    os.kill(first.pid, signal.SIGKILL)

    def failed_now() -> ReplicaStatus | None:
        now = the_replica(agent)
        return now if now.state is ReplicaState.FAILED else None

    failed = wait_for(failed_now, timeout_s=20, what="the restart to fail on its record")
    assert "cannot write the state file" in (failed.last_error or ""), failed.last_error
    assert processes_with(f"org/{marker}") == [], "the restart left no process running untracked"


def test_a_record_without_a_pid_finds_its_process_by_the_marker(tmp_path: Path, marker: str) -> None:
    """The agent died after writing the record and starting the process, before writing the process's pid: the
    next agent adopts the process that carries the recorded marker, and starts no second one."""
    req = request(tmp_path, marker)
    first = started_agent(tmp_path / "state")
    second: LocalAgent | None = None
    try:
        first.install_backend(req.backend)
        loaded = first.load(req)
        assert loaded.state is ReplicaState.RUNNING and loaded.pid is not None, loaded.last_error
        first.close()  # the replica keeps running, as after the agent's death
        record = json.loads(record_path(tmp_path).read_text())
        assert record["pid"] == loaded.pid and record["marker"].startswith("chat/0/")
        record_path(tmp_path).write_text(json.dumps({**record, "pid": None, "process_start": None, "pgid": None}))
        second = started_agent(tmp_path / "state")
        adopted = wait_for(
            lambda: next((r for r in second.list_replicas() if r.state is ReplicaState.RUNNING), None),
            timeout_s=30,
            what="the replica to be adopted by its marker",
        )
        assert adopted.pid == loaded.pid and adopted.restarts == 0, adopted.last_error
        assert [p.pid for p in processes_with(f"org/{marker}")] == [loaded.pid], "no second process"
        assert json.loads(record_path(tmp_path).read_text())["pid"] == loaded.pid, "the record is completed"
        second.close(stop_replicas=True)
        assert processes_with(f"org/{marker}") == []
    finally:
        if second is not None:
            second.close(stop_replicas=True)
        first.close(stop_replicas=True)


def test_a_process_that_inherited_the_marker_but_leads_no_group_is_not_adopted(
    tmp_path: Path, marker: str
) -> None:
    """Only the session leader a start made is the replica, not a process that inherited its marker."""
    req = request(tmp_path, marker)
    first = started_agent(tmp_path / "state")
    try:
        first.install_backend(req.backend)
        assert first.load(req).state is ReplicaState.RUNNING
        record = json.loads(record_path(tmp_path).read_text())
    finally:
        first.close(stop_replicas=True)
    child = subprocess.Popen(  # in this test's process group, leading none
        [sys.executable, "-c", "import time; time.sleep(120)", f"org/{marker}"],
        env={**os.environ, MARKER_VARIABLE: record["marker"]},
    )
    try:
        record_path(tmp_path).write_text(json.dumps({**record, "pid": None, "process_start": None, "pgid": None}))
        second = started_agent(tmp_path / "state")
        try:
            assert the_replica(second).pid != child.pid
        finally:
            second.close(stop_replicas=True)
        assert child.poll() is None, "a stop does not touch it either"
    finally:
        child.kill()
        child.wait()
