"""How an agent joins its fleet over the bus: with a join token the first time, with its own credential after
(architecture.md §3, "Admission").

The credential the controller gives in exchange for the token is written to ``<state-dir>/agent/credential``
(mode 0600, atomically) and is the node's identity from then on: a restarted agent rejoins with it, and signs its
heartbeats with its hash. The join token is read from its file and never written anywhere. A refusal is final
(``JoinRefused``, with the controller's reason for the log); a bus without a controller answering is not
(``BusError``: try again later).

With ``request_certificate`` (the TLS bootstrap), a registration also carries a signing request for a key made
here; the certificate the controller sends back is checked (it names this node, the CA signed it, it is for
this key) and stored with the key and the CA by ``agent.bootstrap``. The key is never sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fleetd.agent import bootstrap
from fleetd.transport.bus_api import Bus
from fleetd.transport.bus_messages import (
    REGISTER,
    BadMessage,
    RegisterReply,
    RegisterRequest,
    decode_reply,
    encode_register,
)
from fleetd.transport.certificates import NodeRequest, node_request, usable_for
from fleetd.transport.security import TlsFiles

CREDENTIAL_FILE = "credential"
REGISTER_TIMEOUT_S = 5.0


class JoinRefused(Exception):
    """The controller refused this node; the message is its reason."""


@dataclass(frozen=True, slots=True)
class Joined:
    credential: str
    status: str
    """``pending`` until the node is approved, then ``healthy`` (as the controller said when it answered)."""
    certificate: TlsFiles | None = None
    """Where the certificate the controller issued now is (asked for and sent), else ``None``."""

    def __repr__(self) -> str:
        return f"Joined(status={self.status!r}, certificate={self.certificate is not None})"


def credential_path(state_dir: Path) -> Path:
    return state_dir / "agent" / CREDENTIAL_FILE


def stored_credential(state_dir: Path) -> str | None:
    try:
        text = credential_path(state_dir).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def read_token(path: Path) -> str:
    """The join token in ``path`` (one line); ``JoinRefused`` naming the file when it cannot be read."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise JoinRefused(f"--join-token-file {path}: cannot read it ({exc.strerror or exc})") from None
    if not token:
        raise JoinRefused(
            f"--join-token-file {path}: the file is empty; put the output of `fleetd node token create` in it"
        )
    return token


def join(
    bus: Bus,
    node: str,
    state_dir: Path,
    *,
    address: str | None,
    token_file: Path | None,
    request_certificate: bool = False,
    timeout_s: float = REGISTER_TIMEOUT_S,
) -> Joined:
    """Register with the stored credential, or else with the token (storing the credential it buys); with
    ``request_certificate``, also ask the fleet's CA for a certificate (stored when it comes)."""
    pending = node_request(node) if request_certificate else None
    csr = pending.csr_pem.decode() if pending is not None else None
    credential = stored_credential(state_dir)
    if credential is not None:
        request = RegisterRequest(node, address, credential=credential, csr=csr)
    elif token_file is not None:
        request = RegisterRequest(node, address, token=read_token(token_file), csr=csr)
    else:
        raise JoinRefused(
            f"node {node} has no credential in {credential_path(state_dir)} and no --join-token-file: create a token "
            "with `fleetd node token create` on the controller and pass it in a file"
        )
    try:
        reply = decode_reply(bus.request(REGISTER, encode_register(request), timeout_s=timeout_s))
    except BadMessage as exc:
        raise JoinRefused(f"the controller's reply could not be read: {exc}") from None
    if not reply.ok:
        raise JoinRefused(reply.reason)
    if reply.credential is not None:
        _store(credential_path(state_dir), reply.credential)
        credential = reply.credential
    if credential is None:
        raise JoinRefused("the controller accepted the token but sent no credential")
    certificate = _store_certificate(state_dir, node, pending, reply) if pending is not None else None
    return Joined(credential, reply.status, certificate)


def _store_certificate(state_dir: Path, node: str, pending: NodeRequest, reply: RegisterReply) -> TlsFiles | None:
    if reply.certificate is None or reply.ca is None:
        return None
    cert, ca = reply.certificate.encode(), reply.ca.encode()
    why = usable_for(cert, ca, node, key_pem=pending.key_pem)
    if why is not None:
        raise JoinRefused(f"the certificate the controller sent cannot serve this node: {why}")
    return bootstrap.store(state_dir, pending.key_pem, cert, ca)


def _store(path: Path, credential: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(credential + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    tmp.replace(path)
