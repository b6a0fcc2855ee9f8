"""Two controllers of a distributed fleet on one PostgreSQL, end to end (all real processes): two ``fleetd serve``
share the registry and the NATS server, two ``fleetd agent`` joined with a token. The leader is SIGKILLed while
it applies (its loads still starting: the fake backend answers 503 for its first seconds); the follower takes the
lease within its TTL and converges the fleet with exactly the replicas wanted (the loads the dead leader started
are adopted, none duplicated); and an agent that took a command from the new leader refuses the old leader's
epoch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetd.daemon.nats_server import BundledNats
from fleetd.transport.agent_api import AgentFenced, CallerFence
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import processes_with, wait_for
from tests.conftest import Database, _database
from tests.daemon.support import Served, fleetd_cli, node_table, one_instance_fleet

MARK = f"failover-e2e-{uuid.uuid4().hex[:10]}"
"""In the model paths of this module's replicas, unique per run: what the test counts and kills by, so that
another run on this machine is never counted or killed."""
TTL_S = 3.0
PORTS = {"gpu-a": (25100, 25199), "gpu-b": (25200, 25299)}


@pytest.fixture
def postgres(tmp_path: Path, postgres_admin_url: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    template = request.getfixturevalue("_postgres_template")
    yield from _database("postgresql", tmp_path, postgres_admin_url, template=template)


def leader_of(pair: list[Served]) -> tuple[Served, Served] | None:
    gauges = [s.metric("fleetd_leader") for s in pair]
    if sorted(g for g in gauges if g is not None) != [0.0, 1.0]:
        return None
    return (pair[0], pair[1]) if gauges[0] == 1.0 else (pair[1], pair[0])


def test_the_follower_converges_after_the_leader_dies_mid_apply(
    tmp_path: Path, postgres: Database, own_nats: BundledNats
) -> None:
    state = tmp_path / "state"
    created = fleetd_cli(state, "node", "token", "create", "--uses", "2", database_url=postgres.url)
    assert created.returncode == 0, created.stderr
    (tmp_path / "token").write_text(created.stdout)
    manifest = one_instance_fleet(
        tmp_path, MARK, replicas=2, extra=" environment: {FAKE_BACKEND_START_DELAY_MS: '3000'},"
    )
    agents = [
        agent_process(
            name,
            tmp_path / "agents",
            facts={"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "16GiB"},
            ports=ports,
            extra=("--nats", own_nats.url, "--join-token-file", str(tmp_path / "token")),
        )
        for name, ports in PORTS.items()
    ]
    extra = ("--database-url", postgres.url, "--lease-ttl", f"{TTL_S:g}s", "--nats", own_nats.url, "--insecure")
    pair: list[Served] = []
    try:
        pair.append(Served(manifest, state, tmp_path / "first.log", *extra))
        wait_for(lambda: pair[0].metric("fleetd_leader") == 1, timeout_s=30, what="the first to lead")
        pair.append(Served(manifest, state, tmp_path / "second.log", *extra))
        for agent in agents:
            agent.start()
        wait_for(
            lambda: len(node_table(state, database_url=postgres.url)) == 2, timeout_s=60, what="two nodes to join"
        )
        leader, follower = wait_for(lambda: leader_of(pair), timeout_s=30, what="exactly one leader")
        deposed = wait_for(leader.status, timeout_s=10, what="the leader's status")
        for agent in agents:  # approval starts the apply: two loads, each slow to become healthy
            assert fleetd_cli(state, "node", "approve", agent.node, database_url=postgres.url).returncode == 0
        wait_for(lambda: len(processes_with(MARK)) >= 1, timeout_s=60, what="the leader's first load")
        leader.process.kill()  # mid-apply: its loads are still starting
        leader.process.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: follower.metric("fleetd_leader") == 1, timeout_s=TTL_S * 4, what="the takeover")
        assert time.monotonic() - killed <= TTL_S * 4 / 3 + 2.0
        wait_for(
            lambda: len(follower.replicas()) == 1 and len(processes_with(MARK)) == 2,
            timeout_s=60,
            what="the follower to converge",
        )
        running = wait_for(_two_running, timeout_s=60, what="two replicas running")
        status = follower.status() or {}
        assert status["epoch"] > deposed["epoch"]
        assert len(processes_with(MARK)) == 2  # no duplicate: what the dead leader started was adopted
        _the_old_epoch_is_refused(follower, agents, deposed, running)
    finally:
        for served in pair:
            served.stop()
        for agent in agents:
            agent.stop()
        for process in processes_with(MARK):
            process.kill()


def _two_running() -> list[int] | None:
    found = sorted(p.pid for p in processes_with(MARK))
    return found if len(found) == 2 else None


def _the_old_epoch_is_refused(
    follower: Served, agents: list[AgentProcess], deposed: dict[str, Any], running: list[int]
) -> None:
    """Each agent heard the new leader (its first look at a node carries its epoch): a command from the old
    leader is refused there, and changes nothing."""
    old = CallerFence(int(deposed["epoch"]), str(deposed["holder"]))
    for agent in agents:
        client = GrpcAgentClient(agent.node, agent.address, INSECURE, fence=lambda: old)
        try:
            with pytest.raises(AgentFenced, match=f"lease epoch {old.epoch} is lower"):
                client.unload("chat", 0)
        finally:
            client.close()
    assert _two_running() == running
    assert "a new controller leads" in "".join(a.log() for a in agents)
