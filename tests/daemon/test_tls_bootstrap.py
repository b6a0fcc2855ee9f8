"""TLS with no flags at all, in real processes: ``fleetd serve --nats-listen`` creates the fleet's CA in its state
dir; an agent given only ``--nats`` and ``--join-token-file`` registers first, gets its certificate signed by
that CA (key 0600, made on the node, the node's name in it) and serves its gRPC path with it; once the node is
approved the controller places a replica there over mutual TLS; a plaintext client, and a client presenting a
node's certificate, are refused; a restarted agent reuses its certificate; ``fleetd status`` on the controller's
host finds the CA in the state dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from fleetd.daemon.agent_daemon import resolve_port
from fleetd.transport.agent_api import AgentError
from fleetd.transport.certificates import certificate_names, fleet_security
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE, Security, TlsMaterial
from tests.agent.remote import AgentProcess, agent_process
from tests.agent.support import processes_with, wait_for
from tests.daemon.support import Served, fake_llama_executable, free_port, model_file

MARK = f"served-with-bootstrapped-tls-{uuid.uuid4().hex[:10]}"
"""In the model paths of this module's replicas, unique per run: what the test counts and kills by, so that
another run on this machine is never counted or killed."""


def fleetd(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETD_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )


def node(state: Path, name: str) -> dict[str, Any] | None:
    shown = fleetd(state, "node", "list", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return {n["name"]: n for n in json.loads(shown.stdout)["nodes"]}.get(name)


def write_manifest(path: Path, executable: Path, address: str) -> None:
    path.write_text(
        "version: 1\n"
        f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
        f"nodes:\n  gpu-a: {{address: '{address}'}}\n"
        "instances:\n"
        f"  chat: {{backend: fake, model: {model_file(path.parent / 'models' / f'{MARK}.gguf')}, vram: 1GiB,"
        " health: {interval: 100ms, timeout: 1s, startup_timeout: 20s, failure_threshold: 3}}\n"
    )


def check_certificate(agent: AgentProcess, ca_pem: bytes) -> bytes:
    where = agent.state_dir / "agent" / "tls"
    assert stat.S_IMODE((where / "node.key").stat().st_mode) == 0o600
    cert_pem = (where / "node.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert cert.subject.rfc4514_string() == "CN=gpu-a" and certificate_names(cert) == ["gpu-a"]
    assert (where / "ca.crt").read_bytes() == ca_pem
    return cert_pem


@pytest.mark.timeout(300)
def test_a_fleet_without_tls_flags_bootstraps_mutual_tls(tmp_path: Path) -> None:
    state = tmp_path / "state"
    created = fleetd(state, "node", "token", "create")
    assert created.returncode == 0, created.stderr
    (tmp_path / "token").write_text(created.stdout)
    nats_port, agent_port = free_port(), free_port()
    address = f"127.0.0.1:{agent_port}"
    manifest = tmp_path / "fleet.yaml"
    write_manifest(manifest, fake_llama_executable(tmp_path), address)
    gpu_a = agent_process(
        "gpu-a",
        tmp_path / "agents",
        bootstrap=True,
        facts={"gpu_vendor": "nvidia", "total_vram": "8GiB", "total_ram": "16GiB"},
        ports=(24700, 24799),
        extra=("--nats", f"nats://127.0.0.1:{nats_port}", "--join-token-file", str(tmp_path / "token")),
    )
    served = Served(manifest, state, tmp_path / "serve.log", "--nats-listen", f"127.0.0.1:{nats_port}")
    try:
        wait_for(lambda: "created the fleet's CA" in served.output(), timeout_s=60, what="serve to make its CA")
        ca_pem = (state / "tls" / "ca.crt").read_bytes()
        assert stat.S_IMODE((state / "tls" / "ca.key").stat().st_mode) == 0o600
        gpu_a.start(listen=address)
        assert "joining the fleet for a certificate before serving" in gpu_a.log()
        # the address file is written as the server binds; its "serving" line follows
        wait_for(lambda: "(mutual TLS)" in gpu_a.log(), timeout_s=30, what="gpu-a to serve over mutual TLS")
        assert "insecure" not in gpu_a.log().lower()
        cert_pem = check_certificate(gpu_a, ca_pem)
        assert (
            b"PRIVATE"
            not in (tmp_path / "serve.log").read_bytes() + (tmp_path / "agents" / "gpu-a.log").read_bytes()
        )

        wait_for(
            lambda: (node(state, "gpu-a") or {}).get("heartbeat_age_ms") is not None, timeout_s=30, what="beats"
        )
        assert processes_with(MARK) == []  # not approved: nothing placed, no instance's environment sent
        approved = fleetd(state, "node", "approve", "gpu-a")
        assert approved.returncode == 0, approved.stderr
        wait_for(lambda: len(processes_with(MARK)) == 1, timeout_s=60, what="chat to start on gpu-a over mTLS")
        shown = node(state, "gpu-a")
        assert shown is not None and shown["status"] == "healthy" and shown["last_error"] is None

        with pytest.raises(AgentError, match="cannot reach the agent"):
            GrpcAgentClient("gpu-a", address, INSECURE, call_timeout_s=3).health()
        key_pem = (gpu_a.state_dir / "agent" / "tls" / "node.key").read_bytes()
        as_a_node = Security(TlsMaterial(cert_pem, key_pem, ca_pem))  # a node's certificate is for serving only
        with pytest.raises(AgentError, match="cannot reach the agent"):
            GrpcAgentClient("gpu-a", address, as_a_node, call_timeout_s=3).health()
        assert GrpcAgentClient("gpu-a", address, fleet_security(state / "tls")).health().node == "gpu-a"

        assert gpu_a.stop() == 0
        gpu_a.start()  # rejoins with its credential, serves at once with the stored certificate
        wait_for(lambda: gpu_a.log().count("joined the fleet") == 2, timeout_s=60, what="gpu-a to rejoin")
        assert check_certificate(gpu_a, ca_pem) == cert_pem
        assert gpu_a.log().count("joining the fleet for a certificate") == 1

        served.stop()  # the lease is free: `fleetd status` asks the agent itself, with the CA in the state dir
        status = fleetd(state, "status", str(manifest), "--format", "json")
        assert status.returncode == 0, status.stderr
        document = json.loads(status.stdout)
        assert {n["name"]: n["status"] for n in document["nodes"]} == {"gpu-a": "healthy"}
        assert [r["node"] for r in document["replicas"]] == ["gpu-a"]
        elsewhere = fleetd(tmp_path / "elsewhere", "status", str(manifest))
        assert elsewhere.returncode == 1 and "`fleetd serve` creates it" in elsewhere.stderr
        assert "Traceback" not in elsewhere.stderr
    finally:
        served.stop()
        gpu_a.stop()
        for process in processes_with(MARK):
            process.kill()


@pytest.mark.timeout(180)
def test_an_agent_without_tls_flags_stops_when_the_controller_issues_no_certificate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    created = fleetd(state, "node", "token", "create")
    assert created.returncode == 0, created.stderr
    (tmp_path / "token").write_text(created.stdout)
    nats_port = free_port()
    manifest = tmp_path / "fleet.yaml"
    write_manifest(manifest, fake_llama_executable(tmp_path), f"127.0.0.1:{free_port()}")
    served = Served(
        manifest, state, tmp_path / "serve.log", "--nats-listen", f"127.0.0.1:{nats_port}", "--insecure"
    )
    try:
        wait_for(lambda: "answering registrations" in served.output(), timeout_s=60, what="serve's bus")
        assert "[insecure: no TLS] --insecure" in served.output() and not (state / "tls").exists()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETD_")}
        argv = ["agent", "--node", "gpu-a", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "gpu-a")]
        argv += ["--nats", f"nats://127.0.0.1:{nats_port}", "--join-token-file", str(tmp_path / "token")]
        refused = subprocess.run(
            [sys.executable, "-m", "fleetd", *argv],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert refused.returncode == 1
        assert "the controller issued no certificate (it runs with --insecure" in refused.stderr
        assert "Traceback" not in refused.stderr and "serving on" not in refused.stderr
    finally:
        served.stop()


def test_a_port_chosen_by_the_os_is_chosen_before_registering() -> None:
    host, port = resolve_port("127.0.0.1:0").rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert resolve_port("127.0.0.1:7443") == "127.0.0.1:7443"
