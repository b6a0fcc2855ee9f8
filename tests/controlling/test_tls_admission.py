"""The TLS bootstrap at registration: a node's signing request is signed by the fleet's CA when its token or
credential is accepted, and the agent keeps key (0600, made there, never sent), certificate and CA; a request
naming another node is refused with the reason before anything is spent; a rejoin renews a lost certificate;
a controller without a CA of its own issues none. The bus is the in-memory ``FakeBus``, the registry SQLite."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from fleetd.agent import bootstrap
from fleetd.agent.joining import join
from fleetd.controlling.admission import Admission
from fleetd.registry.engine import open_engine
from fleetd.registry.facade import Registry
from fleetd.registry.migrating import upgrade
from fleetd.transport.bus_messages import REGISTER, RegisterRequest, decode_reply, encode_register
from fleetd.transport.certificates import Authority, certificate_names, ensure_authority, node_request
from tests.conftest import ManualClock
from tests.transport.certs import issue, make_ca
from tests.transport.fake_bus import FakeBroker


@pytest.fixture
def registry(tmp_path: Path, clock: ManualClock) -> Registry:
    engine = open_engine(f"sqlite:///{tmp_path / 'fleetd.db'}")
    upgrade(engine)
    return Registry(engine, clock)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return ensure_authority(tmp_path / "controller" / "tls")[0]


@pytest.fixture
def admission(registry: Registry, authority: Authority) -> Admission:
    return Admission(registry, authority=authority)


def broker_for(admission: Admission) -> FakeBroker:
    broker = FakeBroker()
    admission.listen(broker.connect("controller"))
    return broker


def token_file(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "token"
    path.write_text(registry.create_join_token(ttl_ms=3_600_000, uses=1).token + "\n")
    return path


def test_a_joining_node_gets_a_certificate_for_its_key_and_keeps_the_key_private(
    registry: Registry, admission: Admission, authority: Authority, tmp_path: Path
) -> None:
    broker = broker_for(admission)
    state = tmp_path / "gpu-a"
    joined = join(
        broker.connect("gpu-a"),
        "gpu-a",
        state,
        address="10.0.0.5:7443",
        token_file=token_file(tmp_path, registry),
        request_certificate=True,
    )
    assert joined.certificate == bootstrap.tls_files(state)
    files = joined.certificate
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(authority.cert)
    assert certificate_names(cert) == ["gpu-a"]
    assert files.ca.read_bytes() == authority.cert_pem
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    found = bootstrap.stored(state, "gpu-a")
    assert found.security is not None and not found.renew
    assert bootstrap.stored(state, "gpu-b").security is None  # a certificate for another name serves nothing

    files.cert.unlink()  # lost: the rejoin with the credential brings a new one
    assert bootstrap.stored(state, "gpu-a").renew
    again = join(broker.connect("gpu-a"), "gpu-a", state, address=None, token_file=None, request_certificate=True)
    assert again.certificate is not None and bootstrap.stored(state, "gpu-a").security is not None


def test_a_request_for_another_name_is_refused_and_spends_nothing(
    registry: Registry, admission: Admission, tmp_path: Path
) -> None:
    token = token_file(tmp_path, registry).read_text().strip()
    bus = broker_for(admission).connect("gpu-a")
    stolen = RegisterRequest("gpu-a", None, token=token, csr=node_request("gpu-b").csr_pem.decode())
    reply = decode_reply(bus.request(REGISTER, encode_register(stolen), timeout_s=5))
    assert not reply.ok and reply.certificate is None
    assert "names gpu-b, not the registering node gpu-a" in reply.reason
    assert admission.refused["bad_csr"] == 1
    assert registry.snapshot().nodes == ()
    honest = RegisterRequest("gpu-a", None, token=token, csr=node_request("gpu-a").csr_pem.decode())
    assert decode_reply(bus.request(REGISTER, encode_register(honest), timeout_s=5)).ok  # the token was not spent


def test_a_controller_without_a_ca_of_its_own_issues_no_certificate(registry: Registry, tmp_path: Path) -> None:
    broker = broker_for(Admission(registry))
    joined = join(
        broker.connect("gpu-a"),
        "gpu-a",
        tmp_path / "gpu-a",
        address=None,
        token_file=token_file(tmp_path, registry),
        request_certificate=True,
    )
    assert joined.status == "pending" and joined.certificate is None
    assert not bootstrap.tls_files(tmp_path / "gpu-a").key.exists()


def test_a_certificate_about_to_expire_still_serves_and_is_renewed(tmp_path: Path) -> None:
    authority = make_ca(tmp_path / "pki")
    short = issue(authority, tmp_path / "pki", "gpu-a")  # valid for one day
    state = tmp_path / "gpu-a"
    bootstrap.store(state, short.key.read_bytes(), short.cert.read_bytes(), short.ca.read_bytes())
    found = bootstrap.stored(state, "gpu-a")
    assert found.security is not None and found.renew and found.why == "expires within 30 days"
