"""Nodes that join over a real NATS server (the bundled one, run by ``fleetd serve --nats-listen``): a join token
from ``fleetd node token create`` admits a node ``pending``; a wrong token is refused with the reason in the
agent's log and the agent exits 1; ``fleetd node approve`` lets the planner use the node; heartbeats reach the
registry; a restarted agent rejoins with its stored credential."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from tests.agent.remote import agent_process
from tests.agent.support import processes_with, wait_for
from tests.daemon.support import Served, fake_llama_executable, fleetd_cli, free_port, model_file, node_table

TOKEN_MARK = f"served-over-nats-{uuid.uuid4().hex[:10]}"
"""In the model paths of this module's replicas, unique per run: what the test counts and kills by, so that
another run on this machine is never counted or killed."""


def test_join_approve_heartbeat_and_rejoin_over_nats(tmp_path: Path) -> None:
    state = tmp_path / "state"
    created = fleetd_cli(state, "node", "token", "create", "--uses", "1")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("fjt_") and created.stdout == token + "\n"
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "wrong").write_text("fjt_wrong\n")
    nats_port = free_port()
    url = f"nats://127.0.0.1:{nats_port}"

    gpu_a = agent_process(
        "gpu-a",
        tmp_path / "agents",
        facts={"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "16GiB"},
        ports=(24600, 24699),
        extra=("--nats", url, "--join-token-file", str(tmp_path / "token")),
    )
    manifest = tmp_path / "fleet.yaml"
    executable = fake_llama_executable(tmp_path)
    served: Served | None = None
    try:
        gpu_a.start()
        manifest.write_text(
            "version: 1\n"
            f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
            f"nodes:\n  gpu-a: {{address: '{gpu_a.address}'}}\n"
            "instances:\n"
            f"  chat: {{backend: fake, model: {model_file(tmp_path / 'models' / f'{TOKEN_MARK}.gguf')},"
            " vram: 1GiB,"
            " health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}}\n"
        )
        served = Served(
            manifest, state, tmp_path / "serve.log", "--nats-listen", f"127.0.0.1:{nats_port}", "--insecure"
        )
        wait_for(lambda: "joined the fleet: pending" in gpu_a.log(), timeout_s=60, what="gpu-a to join")

        def beating() -> dict[str, Any] | None:
            node = node_table(state).get("gpu-a")
            return node if node is not None and node["heartbeat_age_ms"] is not None else None

        seen = wait_for(beating, timeout_s=30, what="gpu-a's heartbeats")
        assert seen["status"] == "pending" and not seen["approved"]
        assert processes_with(TOKEN_MARK) == []  # nothing placed on a node that is not approved

        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleetd",
                "agent",
                "--node",
                "gpu-b",
                "--listen",
                "127.0.0.1:0",
                "--insecure",
                "--state-dir",
                str(tmp_path / "gpu-b"),
                "--nats",
                url,
                "--join-token-file",
                str(tmp_path / "wrong"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert refused.returncode == 1
        assert "refused to admit it: the join token is not one this fleet issued" in refused.stderr
        assert "gpu-b" not in node_table(state)
        assert served.metric("fleetd_registrations_refused") == 1.0
        assert (served.metric("fleetd_heartbeats_accepted") or 0) >= 1

        approved = fleetd_cli(state, "node", "approve", "gpu-a")
        assert approved.returncode == 0, approved.stderr
        wait_for(lambda: len(processes_with(TOKEN_MARK)) == 1, timeout_s=60, what="chat to start on gpu-a")
        (chat,) = processes_with(TOKEN_MARK)

        # the NATS server dies: serve restarts it, the agent reconnects, heartbeats resume, nothing is re-placed
        (bus_server,) = [c for c in psutil.Process(served.process.pid).children() if c.name() == "nats-server"]
        bus_server.kill()
        killed_at_ms = time.time_ns() // 1_000_000

        def beating_again() -> bool:
            node = node_table(state)["gpu-a"]
            age = node["heartbeat_age_ms"]
            return age is not None and time.time_ns() // 1_000_000 - age > killed_at_ms

        wait_for(beating_again, timeout_s=60, what="heartbeats after the NATS restart")
        assert [p.pid for p in processes_with(TOKEN_MARK)] == [chat.pid]
        assert node_table(state)["gpu-a"]["status"] == "healthy"

        assert gpu_a.stop() == 0
        gpu_a.start()  # the token is spent: it rejoins with its credential
        wait_for(lambda: gpu_a.log().count("joined the fleet") == 2, timeout_s=60, what="gpu-a to rejoin")
        assert "refused" not in gpu_a.log()
        assert len(processes_with(TOKEN_MARK)) == 1
    finally:
        if served is not None:
            served.stop()
        gpu_a.stop()
        for process in processes_with(TOKEN_MARK):
            process.kill()
