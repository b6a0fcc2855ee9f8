"""``fleetd logs INSTANCE[/N] [-f] [--tail N]``: the real CLI in a subprocess, on replicas that are the fake
backend (it writes a line for every request it gets, so a test makes its replica print by asking it something).

On this machine's embedded node the log is read from the state dir; on a node with a ``fleetd agent`` (a real
agent process here) it is streamed over gRPC. A follow is read line by line until the new line comes, under a
deadline, then ended with Ctrl-C (SIGINT), which must exit 0 without a traceback.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetd.agent.log_reading import replica_log_path, split_lines
from fleetd.controlling.oneshot import ApplyRequest, SilentListener, apply_fleet
from fleetd.controlling.opening import AgentAccess
from fleetd.manifest.loading import load_manifest_text
from fleetd.transport.agent_api import CallerFence
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import fake_backend_executable, kill_all
from tests.cli.test_apply_cli import Fleet, fleet

__all__ = ["fleet"]  # the fixture, shared with the apply tests

DEADLINE_S = 20.0
QUIET_HEALTH = "{interval: 1h, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}"
"""Probed once started, then left alone: the replica's log holds only what the test makes it write."""


def say(address: str, text: str) -> None:
    """Make the fake backend at ``address`` write a line with ``text`` to its output."""
    with urllib.request.urlopen(f"http://{address}/v1/models?{text}", timeout=10) as response:
        assert response.status == 200


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


class Follower:
    """``fleetd logs ... -f`` in a subprocess, its stdout read line by line on a thread (reads with deadlines)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        # Python turns SIGINT into KeyboardInterrupt only where it starts with SIGINT not ignored; a test run
        # started as a background job ignores it, and its children would inherit that.
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetd", "logs", *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def first_line(self) -> bytes:
        """The first line printed: once it is out, the follower has its place in the log."""
        return self.read_until(b"")[0]

    def read_until(self, marker: bytes) -> list[bytes]:
        """Lines until one holds ``marker`` (the next line, for an empty marker)."""
        deadline, seen = time.monotonic() + DEADLINE_S, list[bytes]()
        while not seen or marker not in seen[-1]:
            left = deadline - time.monotonic()
            try:
                seen.append(self.lines.get(timeout=max(0.0, left)))
            except queue.Empty:
                self.process.kill()
                _, err = self.process.communicate(timeout=10)
                raise AssertionError(
                    f"{marker!r} not printed within {DEADLINE_S} s; got {seen!r}; stderr {err!r}"
                ) from None
        return seen

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit status and stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return self.process.returncode, err.decode()


def cli_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
    env["FLEETD_STATE_DIR"] = str(state)
    return env


# this machine's embedded node: the log is read in the state dir -----------------------------------------------


def test_logs_print_the_last_lines_of_a_local_replica_and_name_what_is_wrong(fleet: Fleet) -> None:
    missing = one_error_line(fleet.run("logs", "chat"))
    assert f"no registry at {fleet.state / 'fleetd.db'}" in missing and "fleetd apply" in missing

    assert fleet.run("apply", "--auto-approve").returncode == 0
    (replica,) = fleet.status_json()["replicas"]
    say(replica["address"], "marker-tail")
    log = replica_log_path(fleet.state, "chat", 0)
    lines = split_lines(log.read_bytes())
    assert len(lines) > 3 and b"marker-tail" in lines[-1]

    last = fleet.run("logs", "chat", "--tail", "3")
    assert (last.returncode, last.stderr) == (0, "")
    assert last.stdout.encode() == b"".join(lines[-3:])
    everything = fleet.run("logs", "chat/0")
    assert everything.stdout.encode() == b"".join(lines[-100:])
    assert fleet.run("logs", "chat", "--tail", "0").stdout == ""

    assert one_error_line(fleet.run("logs", "chat/5")) == (
        "error: no replica chat/5 in the registry: chat has replica 0 (on local)"
    )
    assert "error: no replica of nope in the registry: `fleetd status` lists the replicas" in one_error_line(
        fleet.run("logs", "nope")
    )
    assert "expected INSTANCE or INSTANCE/N" in one_error_line(fleet.run("logs", "chat/x"))


def test_an_instance_with_several_replicas_needs_one_named(fleet: Fleet) -> None:
    fleet.write(fleet.instance(extra="    scheduling: {min_replicas: 2}\n"))
    fleet.manifest.write_text(
        fleet.manifest.read_text() + "nodes:\n  local: {approved: true, max_replicas_per_model: 2}\n"
    )
    applied = fleet.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert one_error_line(fleet.run("logs", "chat")) == (
        "error: chat has replicas 0, 1 (on local): name one as chat/N"
    )
    assert fleet.run("logs", "chat/1", "--tail", "1").stdout.startswith("127.0.0.1 ")


def test_follow_prints_what_the_replica_writes_next_until_ctrl_c(fleet: Fleet) -> None:
    assert fleet.run("apply", "--auto-approve").returncode == 0
    (replica,) = fleet.status_json()["replicas"]
    follower = Follower(["chat", "-f", "--tail", "1"], cli_env(fleet.state), fleet.root)
    try:
        assert follower.first_line().startswith(b"127.0.0.1 ")  # the last line, as --tail 1 asks
        say(replica["address"], "marker-follow-1")
        say(replica["address"], "marker-follow-2")
        seen = follower.read_until(b"marker-follow-2")
        assert sum(b"marker-follow-1" in line for line in seen) == 1
    finally:
        code, err = follower.interrupt()
    assert (code, err) == (0, "")


# a node with a `fleetd agent`: the log is streamed over gRPC ---------------------------------------------------


@dataclass(frozen=True)
class RemoteFleet:
    agent: AgentProcess
    state: Path
    address: str
    """The replica's."""


@pytest.fixture
def remote_fleet(tmp_path: Path) -> Iterator[RemoteFleet]:
    """A replica of ``chat`` on node gpu-a, whose agent is a real ``fleetd agent`` process, applied by a
    controller whose registry is in ``state``."""
    model_file = tmp_path / "models" / f"{uuid.uuid4().hex}-chat.gguf"  # the agent is asked whether it is there
    model_file.parent.mkdir()
    model_file.write_bytes(b"")
    model = str(model_file)
    facts = {"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "32GiB"}
    port = free_port()  # the replica's: from the OS, so that no other test's replica can hold it
    agent = agent_process("gpu-a", tmp_path / "agents", facts=facts, ports=(port, port)).start()
    state = tmp_path / "state"
    text = (
        "version: 1\n"
        f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {fake_backend_executable(tmp_path)}}}}}\n"
        f"nodes:\n  gpu-a: {{address: '{agent.address}', approved: true}}\n"
        f"instances:\n  chat: {{backend: fake, model: {model}, vram: 1GiB, health: {QUIET_HEALTH}}}\n"
    )
    desired = load_manifest_text(text).desired
    assert desired is not None
    try:
        result = apply_fleet(
            ApplyRequest(desired, access=AgentAccess(insecure=True)),
            database_url=f"sqlite:///{state / 'fleetd.db'}",
            listener=SilentListener(),
        )
        assert result.exit_code == 0, result
        reader = GrpcAgentClient("gpu-a", agent.address, INSECURE)
        (replica,) = reader.list_replicas()
        reader.close()
        assert replica.address is not None
        yield RemoteFleet(agent, state, replica.address)
    finally:
        if agent.process is not None and agent.process.poll() is None:
            cleanup = GrpcAgentClient("gpu-a", agent.address, INSECURE, fence=lambda: CallerFence(10**6, "test"))
            for running in cleanup.list_replicas():
                cleanup.unload(running.instance, running.replica, grace_s=5)
            cleanup.close()
        agent.stop()
        kill_all(model)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_logs(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetd", "logs", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=cli_env(state),
        stdin=subprocess.DEVNULL,
    )


def test_logs_of_a_remote_replica_come_from_its_agent_tail_and_follow(remote_fleet: RemoteFleet) -> None:
    say(remote_fleet.address, "marker-remote-tail")
    tail = run_logs(remote_fleet.state, "chat/0", "--tail", "20", "--insecure")
    assert (tail.returncode, tail.stderr) == (0, "")
    assert "marker-remote-tail" in tail.stdout and len(tail.stdout.splitlines()) <= 20
    assert not (remote_fleet.state / "agent").exists(), "the controller's state dir has no replica of gpu-a"

    follower = Follower(["chat", "--follow", "--tail", "1", "--insecure"], cli_env(remote_fleet.state), Path.cwd())
    try:
        follower.first_line()
        say(remote_fleet.address, "marker-remote-follow")
        follower.read_until(b"marker-remote-follow")
    finally:
        code, err = follower.interrupt()
    assert (code, err) == (0, "")

    without_ca = one_error_line(run_logs(remote_fleet.state, "chat"))
    assert "--tls-cert" in without_ca  # no fleet CA in this state dir, and no --insecure
    remote_fleet.agent.stop()
    unreachable = one_error_line(run_logs(remote_fleet.state, "chat", "--insecure"))
    assert f"node gpu-a ([insecure: no TLS] {remote_fleet.agent.address}): cannot reach the agent" in unreachable
    assert "check that `fleetd agent` runs there" in unreachable
