"""The fleet's own certificate authority and what it issues: the TLS bootstrap (architecture.md §3).

TLS is on without any flag: ``fleetd serve`` creates a CA (an EC P-256 key, a self-signed certificate valid ten
years) in ``<state-dir>/tls`` at its first start and reuses it after. A joining agent makes its own key, which
never leaves the node, and sends a certificate signing request naming itself; the controller signs it (the
node's name as CN and as the only DNS subject alternative name, since the controller checks an agent's
certificate against the node's name) only when the request names the node that registers. The controller
issues its own client certificate from the same CA in memory whenever it opens a fleet.

Extended key usages keep the two roles apart: a node's certificate is for serving only and the controller's
for calling only, so one node's certificate cannot command another node's agent.

Pure functions of PEM bytes and files, with ``cryptography``; errors are ``CertificateError``, one line naming
the file or the request and what to do.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetd.transport.security import Security, SecurityError, TlsMaterial

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_NAME = "fleetd fleet CA"
CONTROLLER_NAME = "fleetd-controller"
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
"""An agent asks for a new certificate when its own expires within this."""
BACKDATE = datetime.timedelta(minutes=5)
"""Certificates start a little in the past: clocks of a fleet differ."""
MAX_CSR_BYTES = 16 * 1024


class CertificateError(SecurityError):
    """A CA, certificate or signing request cannot be used; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Authority:
    """The fleet's CA: its certificate (PEM and parsed) and its private key (never printed)."""

    cert_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"Authority({self.cert.subject.rfc4514_string()!r})"


@dataclass(frozen=True, slots=True)
class NodeRequest:
    """A node's fresh private key (kept on the node) and the signing request for it (sent)."""

    key_pem: bytes
    csr_pem: bytes

    def __repr__(self) -> str:
        return "NodeRequest(<key>, <csr>)"


def authority_dir(state_dir: Path) -> Path:
    return state_dir / "tls"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    tmp.replace(path)


def create_authority(directory: Path) -> Authority:
    """A new CA written to ``directory`` (key 0600); ``CertificateError`` when it cannot be written."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    try:
        write_private(directory / CA_KEY, _key_pem(key))
        write_private(directory / CA_CERT, cert_pem)
    except OSError as exc:
        raise CertificateError(
            f"cannot create the fleet's CA in {directory}: {exc.strerror or exc} (check the state dir's permissions)"
        ) from None
    return Authority(cert_pem, cert, key)


def load_authority(directory: Path) -> Authority:
    """The CA in ``directory``; ``CertificateError`` naming the file when it is missing or unusable."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except FileNotFoundError as exc:
        raise CertificateError(
            f"the fleet's CA has no {exc.filename or cert_path}: `fleetd serve` creates it at its first start "
            f"(if it was lost, restore {directory} from a backup: the nodes' certificates chain to it)"
        ) from None
    except OSError as exc:
        raise CertificateError(
            f"the fleet's CA {exc.filename or cert_path}: cannot read it ({exc.strerror or exc})"
        ) from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(
            f"the fleet's CA in {directory} is damaged ({exc}); restore it from a backup"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertificateError(f"{key_path} is not the key of {cert_path}: restore both from one backup")
    return Authority(cert_pem, cert, key)


def ensure_authority(directory: Path) -> tuple[Authority, bool]:
    """The CA in ``directory``, created there when it has none yet; and whether it was just created."""
    if not (directory / CA_CERT).exists() and not (directory / CA_KEY).exists():
        return create_authority(directory), True
    return load_authority(directory), False


def _leaf(
    authority: Authority, name: str, public_key: ec.EllipticCurvePublicKey, usage: x509.ObjectIdentifier
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(authority.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, authority.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    return builder.sign(authority.key, hashes.SHA256())


def controller_material(authority: Authority) -> TlsMaterial:
    """A fresh client certificate for this controller process (held in memory, never written)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(authority, CONTROLLER_NAME, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsMaterial(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), authority.cert_pem)


def fleet_security(directory: Path) -> Security:
    """Mutual TLS for a controller from the fleet's CA in ``directory`` (a fresh client certificate)."""
    return Security(controller_material(load_authority(directory)))


def node_request(node: str) -> NodeRequest:
    """A new key for ``node`` and a signing request naming it (CN and DNS subject alternative name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(node))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return NodeRequest(_key_pem(key), csr.public_bytes(serialization.Encoding.PEM))


def check_request(csr_pem: bytes, node: str) -> x509.CertificateSigningRequest:
    """The request, if it is well formed, self-signed and names ``node`` alone; ``CertificateError`` saying
    what is wrong otherwise."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CertificateError(f"the certificate signing request is too large ({len(csr_pem)} bytes)")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CertificateError("the certificate signing request is not a PEM CSR") from None
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:  # pragma: no cover - cryptography reports False
        valid = False
    if not valid:
        raise CertificateError("the certificate signing request's signature does not match its key")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise CertificateError("the certificate signing request's key is not an EC key")
    common = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        dns = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        dns = []
    if common != [node] or dns != [node]:
        named = ", ".join(sorted({str(n) for n in [*common, *dns]})) or "no name"
        raise CertificateError(
            f"the certificate signing request names {named}, not the registering node {node}: a node gets a "
            "certificate for its own name only"
        )
    return csr


def sign_request(authority: Authority, csr_pem: bytes, node: str) -> bytes:
    """The certificate of ``node`` for the key in ``csr_pem`` (serving only); ``CertificateError`` when the
    request does not name ``node`` alone."""
    csr = check_request(csr_pem, node)
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked above
    cert = _leaf(authority, node, public_key, ExtendedKeyUsageOID.SERVER_AUTH)
    return cert.public_bytes(serialization.Encoding.PEM)


def usable_for(cert_pem: bytes, ca_pem: bytes, node: str, *, key_pem: bytes | None = None) -> str | None:
    """Why a stored certificate cannot serve ``node`` (``None`` when it can): unreadable, another name, not
    signed by ``ca_pem``, not the key's, or expired."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return "not a PEM certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the stored CA"
    if certificate_names(cert) != [node]:
        return f"it names {', '.join(certificate_names(cert)) or 'nothing'}, not {node}"
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            return "its key is not a PEM private key"
        if key.public_key() != cert.public_key():
            return "the stored key is not the certificate's"
    if cert.not_valid_after_utc <= _now():
        return f"it expired {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def expires_within(cert_pem: bytes, window: datetime.timedelta) -> bool:
    """Whether the certificate ends within ``window`` from now (time to ask for a new one)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc - window < _now()


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS subject alternative names of ``cert``."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(names.get_values_for_type(x509.DNSName))
