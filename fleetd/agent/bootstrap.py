"""The node's own certificate from the TLS bootstrap: where it is kept, whether it still serves, storing a new one
(architecture.md §3).

``fleetd agent --nats URL`` without ``--tls-*`` files or ``--insecure`` serves its gRPC command path with the
certificate the controller's CA signed at registration. The files live in ``<state-dir>/agent/tls``: ``node.key``
(made on this node, 0600, never sent anywhere), ``node.crt`` and ``ca.crt`` (the fleet's CA, which the
controller's client certificate must chain to). A later start reuses them; missing, damaged, for another name
or about to expire, the agent asks for a new one when it registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetd.transport.certificates import RENEW_BEFORE, expires_within, usable_for, write_private
from fleetd.transport.security import Security, TlsFiles, TlsMaterial

TLS_DIR = "tls"


@dataclass(frozen=True, slots=True)
class Stored:
    """What the state dir holds: the security to serve with (``None``: nothing usable, ``why``), and whether a
    new certificate should be asked for at registration (``renew``)."""

    security: Security | None
    why: str = ""
    renew: bool = False


def tls_files(state_dir: Path) -> TlsFiles:
    where = state_dir / "agent" / TLS_DIR
    return TlsFiles(where / "node.crt", where / "node.key", where / "ca.crt")


def stored(state_dir: Path, node: str) -> Stored:
    """The bootstrapped certificate of ``node`` in ``state_dir``, if it can serve."""
    files = tls_files(state_dir)
    try:
        cert, key, ca = files.cert.read_bytes(), files.key.read_bytes(), files.ca.read_bytes()
    except FileNotFoundError:
        return Stored(None, f"no certificate in {files.cert.parent} yet", renew=True)
    except OSError as exc:
        return Stored(None, f"cannot read {exc.filename}: {exc.strerror or exc}", renew=True)
    why = usable_for(cert, ca, node, key_pem=key)
    if why is not None:
        return Stored(None, f"the certificate {files.cert} cannot serve: {why}", renew=True)
    renew = expires_within(cert, RENEW_BEFORE)
    return Stored(Security(TlsMaterial(cert, key, ca)), "expires within 30 days" if renew else "", renew=renew)


def store(state_dir: Path, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> TlsFiles:
    """Write a new key, certificate and CA (each atomically, all 0600); a crash between them leaves a key that
    is not the certificate's, which ``stored`` finds, so the next registration asks again."""
    files = tls_files(state_dir)
    write_private(files.key, key_pem)
    write_private(files.cert, cert_pem)
    write_private(files.ca, ca_pem)
    return files
