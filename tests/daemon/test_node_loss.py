"""Nodes that fail, end to end: ``fleetd serve`` with the bundled NATS server and three ``fleetd agent`` processes
that joined with a token (all real processes; replicas are the fake backend, which speaks llama-server's
protocol). The liveness thresholds are shortened by the flags (``--unhealthy-after 2s --lost-after 6s``) so the
test waits seconds, not the defaults' 20 s; ``bench/heartbeats.py`` measures the defaults.

- every agent SIGSTOPped at once: the bus guard holds (unhealthy, ``fleetd_bus_suspect`` 1, none lost, nothing
  re-placed or stopped), and they are healthy again on SIGCONT with the same replica processes;
- an agent SIGKILLed with its replica: the node is lost and the replica healthy on the spare node; the agent
  restarted: it rejoins with its credential, nothing is duplicated;
- an agent SIGSTOPped alone past ``--lost-after``: its replica is re-placed; resumed, its old replica is
  reported again and the next plan stops one of the three (two wanted), nothing else.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import psutil

from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import processes_with, wait_for
from tests.daemon.support import Served, fleetd_cli, free_port, node_table, one_instance_fleet

MARK = f"lost-node-e2e-{uuid.uuid4().hex[:10]}"
"""In the model paths of this module's replicas, unique per run: what the test counts and kills by, so that
another run on this machine is never counted or killed."""
PORTS = {"gpu-a": (24700, 24799), "gpu-b": (24800, 24899), "gpu-c": (24900, 24999)}


def replicas_by_node() -> dict[str, list[int]]:
    """The chat replica processes, by the node whose port range their ``--port`` is in."""
    found: dict[str, list[int]] = {}
    for process in processes_with(MARK):
        try:
            argv = process.cmdline()
        except psutil.Error:
            continue
        if "--port" not in argv:
            continue
        port = int(argv[argv.index("--port") + 1])
        node = next(n for n, (low, high) in PORTS.items() if low <= port <= high)
        found.setdefault(node, []).append(process.pid)
    return found


def cycles(served: Served) -> int:
    status = served.status()
    return int(status["cycles"]) if status is not None else 0


def settled(served: Served) -> None:
    """Two more cycles ran: whatever the fleet's latest change calls for has been planned and applied."""
    start = cycles(served)
    wait_for(lambda: cycles(served) >= start + 2, timeout_s=30, what="two more cycles")


def test_bus_guard_node_loss_and_rejoin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    created = fleetd_cli(state, "node", "token", "create", "--uses", "3")
    assert created.returncode == 0, created.stderr
    (tmp_path / "token").write_text(created.stdout)
    nats_port = free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    agents = {
        name: agent_process(
            name,
            tmp_path / "agents",
            facts={"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "16GiB"},
            ports=ports,
            extra=("--nats", url, "--join-token-file", str(tmp_path / "token")),
        )
        for name, ports in PORTS.items()
    }
    manifest = one_instance_fleet(tmp_path, MARK, replicas=2)
    served: Served | None = None
    try:
        served = Served(
            manifest,
            state,
            tmp_path / "serve.log",
            "--nats-listen",
            f"127.0.0.1:{nats_port}",
            "--insecure",
            "--unhealthy-after",
            "2s",
            "--lost-after",
            "6s",
        )
        for agent in agents.values():
            agent.start()
        wait_for(lambda: len(node_table(state)) == 3, timeout_s=60, what="three nodes to join")
        assert {n["status"] for n in node_table(state).values()} == {"pending"}
        assert processes_with(MARK) == []  # nothing is placed on a node that is not approved
        for name in agents:
            assert fleetd_cli(state, "node", "approve", name).returncode == 0
        placed = wait_for(_two_on_two_nodes, timeout_s=60, what="chat's two replicas")
        _bus_guard_holds(served, state, list(agents.values()), placed)
        _lost_node_is_replaced_and_rejoins(served, state, agents, placed)
        _a_returning_node_s_extra_replica_is_stopped(served, state, agents)
    finally:
        if served is not None:
            served.stop()
        for agent in agents.values():
            agent.stop()
        for process in processes_with(MARK):
            process.kill()


def _two_on_two_nodes() -> dict[str, list[int]] | None:
    found = replicas_by_node()
    return found if sorted(len(p) for p in found.values()) == [1, 1] else None


def _bus_guard_holds(
    served: Served, state: Path, agents: list[AgentProcess], placed: dict[str, list[int]]
) -> None:
    for agent in agents:
        agent.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(lambda: served.metric("fleetd_bus_suspect") == 1.0, timeout_s=30, what="the bus guard")
        # past --lost-after (6 s) and a sweep: a node would be lost by now, were it not for the guard
        wait_for(lambda: time.monotonic() - stopped_at > 8, timeout_s=30, what="the lost threshold to pass")
        table = node_table(state)
        assert {n["status"] for n in table.values()} == {"unhealthy"}, table
    finally:
        for agent in agents:
            agent.signal(signal.SIGCONT)
    wait_for(
        lambda: {n["status"] for n in node_table(state).values()} == {"healthy"},
        timeout_s=30,
        what="the nodes to be healthy again",
    )
    assert served.metric("fleetd_bus_suspect") == 0.0
    settled(served)
    assert replicas_by_node() == placed  # the same processes: nothing re-placed, nothing stopped
    assert (served.metric("fleetd_replacements_total") or 0.0) == 0.0


def _lost_node_is_replaced_and_rejoins(
    served: Served, state: Path, agents: dict[str, AgentProcess], placed: dict[str, list[int]]
) -> None:
    victim = sorted(placed)[0]
    spare = next(n for n in agents if n not in placed)
    agents[victim].kill()
    for pid in placed[victim]:
        psutil.Process(pid).kill()
    wait_for(lambda: node_table(state)[victim]["status"] == "offline", timeout_s=30, what=f"{victim} to be lost")
    moved = wait_for(
        lambda: found if (found := _two_on_two_nodes()) is not None and spare in found else None,
        timeout_s=60,
        what=f"chat re-placed on {spare}",
    )
    assert victim not in moved
    wait_for(
        lambda: served.metric("fleetd_replacements_total") == 1.0, timeout_s=30, what="the re-placement counted"
    )
    agents[victim].start()  # on its old address; it rejoins with the credential it kept
    wait_for(lambda: node_table(state)[victim]["status"] == "healthy", timeout_s=30, what=f"{victim} to rejoin")
    assert "refused" not in agents[victim].log()
    # its agent restarts the replica it had (it cannot know it was replaced): the plan stops that one first
    wait_for(lambda: replicas_by_node() == moved, timeout_s=60, what="the returning node's replica to be stopped")
    settled(served)
    assert replicas_by_node() == moved  # nothing duplicated, the replacement untouched


def _a_returning_node_s_extra_replica_is_stopped(
    served: Served, state: Path, agents: dict[str, AgentProcess]
) -> None:
    before = replicas_by_node()
    sleeper = sorted(before)[0]
    agents[sleeper].signal(signal.SIGSTOP)  # its replica keeps running: a partition, not a crash
    try:
        wait_for(
            lambda: node_table(state)[sleeper]["status"] == "offline", timeout_s=30, what=f"{sleeper} to be lost"
        )
        wait_for(
            lambda: len([n for n in replicas_by_node() if n != sleeper]) == 2,
            timeout_s=60,
            what="chat re-placed off the silent node",
        )
    finally:
        agents[sleeper].signal(signal.SIGCONT)
    wait_for(lambda: node_table(state)[sleeper]["status"] == "healthy", timeout_s=30, what=f"{sleeper} back")
    wait_for(_two_on_two_nodes, timeout_s=60, what="the extra replica to be stopped")
    settled(served)
    assert sum(len(p) for p in replicas_by_node().values()) == 2
