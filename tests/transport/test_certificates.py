"""The fleet's CA and what it signs: created once and reused, a node's certificate for its own name only (and
for serving only), the controller's for calling only, and one-line errors naming the file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetd.transport.certificates import (
    CA_CERT,
    CA_KEY,
    CertificateError,
    certificate_names,
    controller_material,
    ensure_authority,
    load_authority,
    node_request,
    sign_request,
    usable_for,
)


def usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_ca_is_created_once_with_a_private_key_and_reused(tmp_path: Path) -> None:
    first, created = ensure_authority(tmp_path / "tls")
    assert created
    assert stat.S_IMODE((tmp_path / "tls" / CA_KEY).stat().st_mode) == 0o600
    assert first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = first.cert.not_valid_after_utc - first.cert.not_valid_before_utc
    assert lifetime.days >= 3650
    again, created = ensure_authority(tmp_path / "tls")
    assert not created and again.cert_pem == first.cert_pem
    assert "PRIVATE" not in repr(again) and "PRIVATE" not in repr(node_request("gpu-a"))


def test_a_node_gets_a_certificate_for_its_own_name_for_serving_only(tmp_path: Path) -> None:
    authority, _ = ensure_authority(tmp_path / "tls")
    request = node_request("gpu-a")
    cert_pem = sign_request(authority, request.csr_pem, "gpu-a")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(authority.cert)
    assert certificate_names(cert) == ["gpu-a"]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["gpu-a"]
    assert usages(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert 364 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366
    assert usable_for(cert_pem, authority.cert_pem, "gpu-a", key_pem=request.key_pem) is None
    assert usable_for(cert_pem, authority.cert_pem, "gpu-b") == "it names gpu-a, not gpu-b"
    other = node_request("gpu-a")
    assert usable_for(cert_pem, authority.cert_pem, "gpu-a", key_pem=other.key_pem) == (
        "the stored key is not the certificate's"
    )
    stranger, _ = ensure_authority(tmp_path / "other")
    assert usable_for(cert_pem, stranger.cert_pem, "gpu-a") == "not signed by the stored CA"


def test_a_request_for_another_name_is_refused_with_the_reason(tmp_path: Path) -> None:
    authority, _ = ensure_authority(tmp_path / "tls")
    with pytest.raises(CertificateError, match=r"names gpu-b, not the registering node gpu-a"):
        sign_request(authority, node_request("gpu-b").csr_pem, "gpu-a")
    with pytest.raises(CertificateError, match="not a PEM CSR"):
        sign_request(authority, b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n", "gpu-a")


def test_the_controller_certificate_is_for_calling_only(tmp_path: Path) -> None:
    authority, _ = ensure_authority(tmp_path / "tls")
    material = controller_material(authority)
    cert = x509.load_pem_x509_certificate(material.cert)
    cert.verify_directly_issued_by(authority.cert)
    assert usages(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert material.ca == authority.cert_pem and "PRIVATE" not in repr(material)


def test_errors_name_the_file_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"has no .*ca\.crt: `fleetd serve` creates it"):
        load_authority(tmp_path / "nothing")
    ensure_authority(tmp_path / "tls")
    (tmp_path / "tls" / CA_KEY).unlink()
    with pytest.raises(CertificateError, match=r"has no .*ca\.key"):
        ensure_authority(tmp_path / "tls")  # half a CA is not silently replaced
    ensure_authority(tmp_path / "other")
    (tmp_path / "tls" / CA_KEY).write_bytes((tmp_path / "other" / CA_KEY).read_bytes())
    with pytest.raises(CertificateError, match=r"ca\.key is not the key of .*ca\.crt"):
        load_authority(tmp_path / "tls")
    (tmp_path / "tls" / CA_CERT).write_text("garbage")
    with pytest.raises(CertificateError, match="is damaged"):
        load_authority(tmp_path / "tls")
