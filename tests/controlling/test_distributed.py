"""One controller, three real ``fleetd agent`` processes on loopback (own state dirs, ports and ``--facts``):
placement by selector and free VRAM, a changed option restarting only its instance, a removed instance stopped
on every node, an agent SIGKILLed and restarted adopting its replicas, and a hung agent (SIGSTOP) that does not
hold up the others. The controller runs the same ``apply_fleet`` / ``status_fleet`` as ``fleetd apply`` and
``fleetd status``; the replicas are the fake backend server, real processes.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fleetd.controlling.oneshot import ApplyRequest, ApplyResult, apply_fleet, status_fleet
from fleetd.controlling.opening import AgentAccess
from fleetd.controlling.status import Manifest
from fleetd.core.desired import DesiredState
from fleetd.core.observed import NodeStatus, ObservedState, ReplicaState
from fleetd.executing.report import ActionOutcome
from fleetd.manifest.loading import load_manifest_text
from fleetd.planning.plans import Plan
from fleetd.transport.agent_api import InstallProgress
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import fake_backend_executable, processes_with

GIB = 1024**3
ACCESS = AgentAccess(insecure=True)
FACTS = {
    "gpu-a": {"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "32GiB"},
    "gpu-b": {"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "32GiB"},
    "gpu-c": {"gpu_vendor": "nvidia", "total_vram": "24GiB", "total_ram": "64GiB"},
}
LABELS = {"gpu-a": "fast", "gpu-b": "fast", "gpu-c": "bulk"}
HEALTH = "health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}"
INSTANCES = {
    "chat": f"""\
  chat:
    backend: fake
    model: org/chat-model
    vram: 6GiB
    options: {{max_model_len: 4096}}
    scheduling: {{min_replicas: 2, max_replicas: 2, node_selector: {{tier: fast}}}}
    {HEALTH}
""",
    "big": f"""\
  big:
    backend: fake
    model: org/big-model
    vram: 20GiB
    {HEALTH}
""",
    "small": f"""\
  small:
    backend: fake
    model: org/small-model
    vram: 1GiB
    scheduling: {{node_selector: {{tier: bulk}}}}
    {HEALTH}
""",
}


class Quiet:
    """An ``ApplyListener`` that approves everything and keeps the outcomes."""

    def __init__(self) -> None:
        self.outcomes: list[ActionOutcome] = []

    def planned(self, plan: Plan) -> None:
        return None

    def confirm(self, plan: Plan) -> str | None:
        return None

    def outcome(self, outcome: ActionOutcome) -> None:
        self.outcomes.append(outcome)

    def progress(self, event: InstallProgress) -> None:
        return None

    def waiting(self, holder: str, timeout_s: float) -> None:
        return None


@dataclass
class Cluster:
    agents: dict[str, AgentProcess]
    database_url: str
    executable: Path
    token: str
    """In every model name (``org-TOKEN/chat-model``): what the teardown kills by, so that it never touches the
    replicas of another test run on this machine."""

    def manifest(
        self, *, instances: tuple[str, ...] = ("chat", "big", "small"), chat_len: int = 4096
    ) -> DesiredState:
        nodes = "".join(
            f"  {name}: {{address: '{agent.address}', labels: {{tier: {LABELS[name]}}}, approved: true}}\n"
            for name, agent in self.agents.items()
        )
        body = (
            "".join(INSTANCES[name] for name in instances)
            .replace("max_model_len: 4096", f"max_model_len: {chat_len}")
            .replace("model: org/", f"model: org-{self.token}/")
        )
        text = (
            "version: 1\n"
            f"backends:\n  fake: {{type: vllm, install: {{binary: {self.executable}}}}}\n"
            f"nodes:\n{nodes}"
            f"instances:\n{body}"
        )
        loaded = load_manifest_text(text)
        assert loaded.desired is not None, [d.message for d in loaded.errors]
        return loaded.desired

    def apply(self, desired: DesiredState) -> ApplyResult:
        listener = Quiet()
        result = apply_fleet(
            ApplyRequest(desired, access=ACCESS), database_url=self.database_url, listener=listener
        )
        assert result.error is None, result.error
        return result

    def observe(self, desired: DesiredState) -> ObservedState:
        return status_fleet(self.database_url, Manifest(desired, ("fleet.yaml",), None), ACCESS).observed

    def pids(self) -> dict[tuple[str, str, int], int]:
        """(instance, node, replica) -> pid, as each node's agent reports it (reads need no lease)."""
        found = {}
        for name, agent in self.agents.items():
            client = GrpcAgentClient(name, agent.address, INSECURE)
            try:
                for status in client.list_replicas():
                    assert status.pid is not None and psutil.pid_exists(status.pid)
                    found[(status.instance, name, status.replica)] = status.pid
            finally:
                client.close()
        return found


def placement(observed: ObservedState) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for replica in observed.replicas:
        assert replica.state is ReplicaState.RUNNING, replica
        where.setdefault(replica.instance, []).append(replica.node)
    return {k: sorted(v) for k, v in where.items()}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("FLEETD_STATE_DIR", str(tmp_path / "controller"))
    agents = {
        name: agent_process(name, tmp_path / "agents", facts=FACTS[name], ports=(23000 + 100 * i, 23099 + 100 * i))
        for i, name in enumerate(FACTS)
    }
    token = uuid.uuid4().hex[:12]
    try:
        for agent in agents.values():
            agent.start()
        yield Cluster(agents, f"sqlite:///{tmp_path / 'fleetd.db'}", fake_backend_executable(tmp_path), token)
    finally:
        for agent in agents.values():
            agent.stop()
        for process in processes_with(f"org-{token}/"):
            process.kill()


def test_one_controller_drives_three_agents(cluster: Cluster) -> None:
    desired = cluster.manifest()
    first = cluster.apply(desired)
    assert first.exit_code == 0
    seen = cluster.observe(desired)
    assert placement(seen) == {"big": ["gpu-c"], "chat": ["gpu-a", "gpu-b"], "small": ["gpu-c"]}
    by_name = {n.name: n for n in seen.nodes}
    assert by_name["gpu-c"].total_vram == 24 * GIB and by_name["gpu-c"].available_vram == 3 * GIB  # 24 - 20 - 1
    before = cluster.pids()

    edited = cluster.manifest(chat_len=2048)  # one option of one instance
    result = cluster.apply(edited)
    assert result.plan is not None and {a.kind.value for a in result.plan.actions} == {"restart"}
    assert {a.instance for a in result.plan.actions} == {"chat"}
    cluster.observe(edited)
    after = cluster.pids()
    for key, pid in before.items():
        assert (after[key] != pid) == (key[0] == "chat"), key

    trimmed = cluster.manifest(instances=("chat", "big"), chat_len=2048)
    cluster.apply(trimmed)
    small_pid = after[("small", "gpu-c", 0)]
    assert not psutil.pid_exists(small_pid) or psutil.Process(small_pid).status() == psutil.STATUS_ZOMBIE
    assert "small" not in placement(cluster.observe(trimmed))

    # SIGKILL gpu-c's agent: its replica keeps serving; the restarted agent adopts it.
    big_pid = after[("big", "gpu-c", 0)]
    cluster.agents["gpu-c"].kill()
    assert psutil.Process(big_pid).is_running()
    cluster.agents["gpu-c"].start()
    again = cluster.apply(trimmed)
    assert again.plan is not None and again.plan.is_empty, again.plan
    final = cluster.observe(trimmed)
    assert cluster.pids()[("big", "gpu-c", 0)] == big_pid
    assert len(processes_with(f"org-{cluster.token}/big-model")) == 1
    assert {r.restarts for r in final.replicas if r.instance == "big"} == {0}


def test_a_hung_agent_does_not_hold_up_the_others_and_recovers(cluster: Cluster) -> None:
    desired = cluster.manifest(instances=("big",))
    cluster.apply(desired)
    hung = cluster.agents["gpu-a"]
    hung.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        seen = cluster.observe(desired)
        took = time.monotonic() - started
    finally:
        hung.signal(signal.SIGCONT)
    nodes = {n.name: n for n in seen.nodes}
    assert nodes["gpu-a"].status is NodeStatus.UNHEALTHY
    assert nodes["gpu-a"].last_error is not None and "got no answer within" in nodes["gpu-a"].last_error
    assert nodes["gpu-b"].status is NodeStatus.HEALTHY and nodes["gpu-c"].status is NodeStatus.HEALTHY
    assert placement(seen) == {"big": ["gpu-c"]}
    assert took < 5.0 + 10.0, took  # the hung node's deadline (5 s), not a hang

    recovered = {n.name: n for n in cluster.observe(desired).nodes}
    assert recovered["gpu-a"].status is NodeStatus.HEALTHY and recovered["gpu-a"].last_error is None


def test_plan_asks_the_nodes_agents_to_estimate_vram_auto(cluster: Cluster, tmp_path: Path) -> None:
    """``fleetd plan`` opens no fleet, but with agent access it asks the remote agents (read-only) for the
    estimate of a ``vram: auto`` model that only the nodes can read."""
    from fleetd.controlling.oneshot import plan_fleet
    from fleetd.planning.planner import PlanPolicy
    from fleetd.planning.plans import ActionKind, LoadDetails
    from fleetd.tools.tiny_gguf import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny.gguf")
    desired = cluster.manifest(instances=("big",))
    text = INSTANCES["big"].replace("org/big-model", str(model)).replace("vram: 20GiB", "vram: auto")
    nodes = "".join(
        f"  {name}: {{address: '{agent.address}', labels: {{tier: {LABELS[name]}}}, approved: true}}\n"
        for name, agent in cluster.agents.items()
    )
    loaded = load_manifest_text(
        f"version: 1\nbackends:\n  fake: {{type: vllm, install: {{binary: {cluster.executable}}}}}\n"
        f"nodes:\n{nodes}instances:\n{text}"
    )
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    cluster.apply(desired)  # registers the nodes
    planned = plan_fleet(
        loaded.desired, database_url=cluster.database_url, policy=PlanPolicy(), revision=None, access=ACCESS
    ).plan
    loads = [a for a in planned.actions if a.kind in (ActionKind.LOAD, ActionKind.RESTART)]
    assert loads, planned.actions
    estimate = GrpcAgentClient("gpu-a", cluster.agents["gpu-a"].address, INSECURE).estimate(
        loaded.desired.instances[0]
    )
    assert estimate > model.stat().st_size
    assert {a.details_as(LoadDetails).vram_bytes for a in loads if a.kind is ActionKind.LOAD} <= {estimate}
    blind = plan_fleet(loaded.desired, database_url=cluster.database_url, policy=PlanPolicy(), revision=None)
    assert blind.plan.hash != planned.hash  # without the agents' estimate the plan differs


def test_plan_asks_the_node_s_agent_for_the_model_file_and_names_it_when_missing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Checks before runtime over gRPC: ``fleetd plan`` asks the real ``fleetd agent`` of the node it would load
    on whether the model file is there (``CheckModels``); missing, the replica is not placed and the plan names the
    path and the node."""
    from fleetd.controlling.oneshot import plan_fleet
    from fleetd.planning.planner import PlanPolicy
    from fleetd.planning.plans import Unschedulable

    present = tmp_path / "present.gguf"
    present.write_bytes(b"GGUF")
    absent = tmp_path / "absent.gguf"
    text = "".join(
        f"  {name}: {{backend: fake, model: {model}, vram: 1GiB, scheduling: {{nodes: [gpu-a]}}}}\n"
        for name, model in (("here", present), ("ghost", absent))
    )
    nodes = "".join(
        f"  {name}: {{address: '{agent.address}', labels: {{tier: {LABELS[name]}}}, approved: true}}\n"
        for name, agent in cluster.agents.items()
    )
    loaded = load_manifest_text(
        f"version: 1\nbackends:\n  fake: {{type: vllm, install: {{binary: {cluster.executable}}}}}\n"
        f"nodes:\n{nodes}instances:\n{text}"
    )
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    cluster.observe(loaded.desired)  # registers the nodes, starts nothing
    planned = plan_fleet(
        loaded.desired, database_url=cluster.database_url, policy=PlanPolicy(), revision=None, access=ACCESS
    ).plan
    assert [a.id for a in planned.actions if a.instance is not None] == ["load:here:gpu-a:0"]
    assert planned.unschedulable == (Unschedulable("ghost", 1, (("model_missing", 1), ("not_allowed", 2))),)
    assert planned.notes == (f"ghost: model {absent} not found on node gpu-a",)
    client = GrpcAgentClient("gpu-b", cluster.agents["gpu-b"].address, INSECURE)
    try:
        assert client.missing_models([str(present), str(absent), "org/chat-model"]) == frozenset({str(absent)})
    finally:
        client.close()
