"""``fleetd serve`` and ``fleetd status`` as an operator runs them against two ``fleetd agent`` processes over
mutual TLS (certificates made here): the serve loop places and starts replicas on both nodes, and ``status``
(while serve leads: the registry as serve recorded it) shows both nodes and replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.transport.security import TlsFiles
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import processes_with, wait_for
from tests.daemon.support import Served, fake_llama_executable, model_file
from tests.transport.certs import issue, make_ca

TOKEN = f"served-distributed-{uuid.uuid4().hex[:10]}"
"""In the model paths of this module's replicas, unique per run: what the test counts and kills by, so that
another run on this machine is never counted or killed."""


def tls_args(files: TlsFiles) -> list[str]:
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[tuple[list[AgentProcess], TlsFiles]]:
    ca = make_ca(tmp_path / "pki")
    nodes = [
        agent_process(
            name,
            tmp_path / "agents",
            ports=(23400 + 100 * i, 23499 + 100 * i),
            tls=issue(ca, tmp_path / "pki", name),
            facts={"total_vram": "8GiB", "gpu_vendor": "nvidia", "total_ram": "16GiB"},
        )
        for i, name in enumerate(("gpu-a", "gpu-b"))
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes, issue(ca, tmp_path / "pki", "controller")
    finally:
        for node in nodes:
            node.stop()
        for process in processes_with(TOKEN):
            process.kill()


def test_serve_converges_two_remote_nodes_over_mutual_tls(
    agents: tuple[list[AgentProcess], TlsFiles], tmp_path: Path
) -> None:
    nodes, controller = agents
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        "version: 1\n"
        f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
        "nodes:\n"
        + "".join(f"  {n.node}: {{address: '{n.address}', approved: true}}\n" for n in nodes)
        + "instances:\n"
        "  chat:\n"
        "    backend: fake\n"
        f"    model: {model_file(tmp_path / 'models' / f'{TOKEN}.gguf')}\n"
        "    vram: 6GiB\n"
        "    scheduling: {min_replicas: 2, max_replicas: 2}\n"
        "    health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}\n"
    )
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log", *tls_args(controller))
    try:

        def running() -> bool:
            replicas = (served.status() or {}).get("replicas", [])
            return len([r for r in replicas if r["state"] == "running"]) == 2

        wait_for(running, timeout_s=60, what="two running replicas in /status")
        assert "distributed fleet: agents reached over mutual TLS" in served.output()
        assert len(processes_with(TOKEN)) == 2
        env = {**os.environ, "FLEETD_STATE_DIR": str(tmp_path / "state")}
        shown = subprocess.run(
            [sys.executable, "-m", "fleetd", "status", str(manifest), "--format", "json", *tls_args(controller)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        assert {n["name"]: n["status"] for n in document["nodes"]} == {"gpu-a": "healthy", "gpu-b": "healthy"}
        assert sorted(r["node"] for r in document["replicas"]) == ["gpu-a", "gpu-b"]
    finally:
        served.stop()
