"""Mutual TLS on the command path, with real certificates made here: the agent accepts only a client whose
certificate its CA signed, and the controller accepts only an agent whose certificate names the node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fleetd.transport import agent_service_pb2 as pb
from fleetd.transport import agent_service_pb2_grpc as pb_grpc
from fleetd.transport.agent_api import AgentError, CallerFence
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import INSECURE, Security, SecurityError, TlsFiles, load_security
from tests.agent.remote import AgentProcess, agent_process
from tests.transport.certs import Authority, issue, make_ca


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return make_ca(tmp_path / "pki")


@pytest.fixture
def remote(tmp_path: Path, ca: Authority) -> Iterator[AgentProcess]:
    agent = agent_process("node-1", tmp_path / "agents", tls=issue(ca, tmp_path / "pki", "node-1"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def secure(files: TlsFiles) -> Security:
    return load_security(files, insecure=False, who="test")


def test_a_client_with_a_certificate_from_the_ca_is_served(
    remote: AgentProcess, ca: Authority, tmp_path: Path
) -> None:
    controller = issue(ca, tmp_path / "pki", "controller")
    client = GrpcAgentClient("node-1", remote.address, secure(controller), fence=lambda: CallerFence(1, "c"))
    assert client.health().node == "node-1"
    assert "mutual TLS" in remote.log() and "insecure" not in remote.log().lower()


def test_a_plaintext_client_is_refused(remote: AgentProcess) -> None:
    with pytest.raises(AgentError, match=r"cannot reach the agent for health"):
        GrpcAgentClient("node-1", remote.address, INSECURE, call_timeout_s=3).health()


def test_a_client_certificate_from_another_ca_is_refused(remote: AgentProcess, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other", "another CA")
    stranger = issue(other, tmp_path / "other", "controller")
    mixed = TlsFiles(stranger.cert, stranger.key, remote_ca(remote))  # trusts the agent, is not trusted back
    with pytest.raises(AgentError, match=r"cannot reach the agent"):
        GrpcAgentClient("node-1", remote.address, secure(mixed), call_timeout_s=3).health()


def test_a_client_without_a_certificate_is_refused(remote: AgentProcess) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=remote_ca(remote).read_bytes())
    options = [("grpc.ssl_target_name_override", "node-1")]
    with grpc.secure_channel(remote.address, credentials, options=options) as channel:
        stub = pb_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Health(pb.HealthRequest(node="node-1"), timeout=3)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_an_agent_whose_certificate_names_another_node_is_refused(
    remote: AgentProcess, ca: Authority, tmp_path: Path
) -> None:
    controller = issue(ca, tmp_path / "pki", "controller")
    with pytest.raises(AgentError, match=r"cannot reach the agent"):
        GrpcAgentClient("node-2", remote.address, secure(controller), call_timeout_s=3).health()


def test_security_options_are_checked_with_clear_errors(tmp_path: Path, ca: Authority) -> None:
    with pytest.raises(SecurityError, match=r"needs mutual TLS: give --tls-cert, --tls-key and --tls-ca"):
        load_security(None, insecure=False, who="fleetd agent")
    files = issue(ca, tmp_path / "pki", "node-1")
    with pytest.raises(SecurityError, match="not both"):
        load_security(files, insecure=True, who="fleetd agent")
    missing = TlsFiles(tmp_path / "nope.pem", files.key, files.ca)
    with pytest.raises(SecurityError, match=r"--tls-cert .*nope\.pem: cannot read it"):
        load_security(missing, insecure=False, who="fleetd agent")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(SecurityError, match=r"--tls-key .*garbage\.pem: not a PEM file"):
        load_security(TlsFiles(files.cert, garbage, files.ca), insecure=False, who="fleetd agent")


def remote_ca(remote: AgentProcess) -> Path:
    index = remote.args.index("--tls-ca")
    return Path(remote.args[index + 1])
