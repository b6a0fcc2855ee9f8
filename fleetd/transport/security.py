"""How the gRPC command path is secured: mutual TLS, or ``--insecure`` chosen out loud (architecture.md §3,
"The command path").

Both ends load the same three kinds of file: their own certificate and key, and the CA that signed the peer's.
The agent requires a client certificate signed by its CA; the controller checks the agent's certificate
against its CA *and* against the node's name (``ssl_target_name_override``): an agent's certificate names its
node (a DNS subject alternative name), so an address that points at the wrong machine is refused rather than
commanded. ``--insecure`` exists for one machine's tests; every log line that uses it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INSECURE_MARK = "[insecure: no TLS]"
"""Prefixed to every log line about a call made or served without TLS."""


class SecurityError(ValueError):
    """A certificate file cannot be used; the message names it and what to do."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM bytes of a ``TlsFiles``, read once when the process starts."""

    cert: bytes
    key: bytes
    ca: bytes

    def __repr__(self) -> str:
        return "TlsMaterial(<pem>)"  # never print a private key


@dataclass(frozen=True, slots=True)
class Security:
    """Mutual TLS with ``tls``, or plaintext when ``tls`` is ``None`` (only ever from an explicit ``--insecure``)."""

    tls: TlsMaterial | None

    @property
    def insecure(self) -> bool:
        return self.tls is None

    @property
    def mark(self) -> str:
        return f"{INSECURE_MARK} " if self.insecure else ""


INSECURE = Security(None)


def load_security(files: TlsFiles | None, *, insecure: bool, who: str) -> Security:
    """Read the certificate files, or accept ``insecure``; exactly one of the two must be chosen.

    ``who`` names the flags in the error (``fleetd agent``, ``fleetd serve``).
    """
    if files is not None and insecure:
        raise SecurityError(f"{who}: give either the TLS files or --insecure, not both")
    if files is None:
        if not insecure:
            raise SecurityError(
                f"{who}: the agents' gRPC path needs mutual TLS: give --tls-cert, --tls-key and --tls-ca "
                "(or, for a test on one machine only, --insecure)"
            )
        return INSECURE
    return Security(
        TlsMaterial(_read(files.cert, "--tls-cert"), _read(files.key, "--tls-key"), _read(files.ca, "--tls-ca"))
    )


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{flag} {path}: not a PEM file (expected '-----BEGIN ...')")
    return data
