"""What travels on the NATS bus: subjects, node keys and the versioned JSON messages (architecture.md §3).

Every message is a JSON object with a ``v`` field; a receiver drops (and counts) a version it does not know
rather than guessing. Heartbeats, signed with HMAC-SHA256 under their node's key, have a wire format of their
own, made for a controller that checks thousands a second: ``heartbeat_wire``.

The key is the SHA-256 of the node's credential (the secret the controller gave the node at registration and
the node keeps in its state dir). The registry stores that hash and never the credential: it verifies
heartbeats, while registering again as the node still needs the credential itself. HMAC, not a public-key
signature, because a controller verifies thousands of heartbeats a second (about 2 µs each against 60 µs for
Ed25519).

Decoding is strict and total: a decoder returns the message or raises ``BadMessage`` with a reason from
``DROP_REASONS`` (the metric label), never anything else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
REGISTER = "fleetd.register"
HEARTBEATS = "fleetd.node.*.heartbeat"
MAX_MESSAGE_BYTES = 1 << 20
DROP_REASONS = ("malformed", "version", "unknown_node", "unsigned", "bad_signature", "stale", "too_large")


def heartbeat_subject(node: str) -> str:
    return f"fleetd.node.{node}.heartbeat"


def events_subject(node: str) -> str:
    return f"fleetd.node.{node}.events"


def node_key(credential: str) -> bytes:
    """The heartbeat signing key of a node: the SHA-256 of its credential (what the registry stores)."""
    return hashlib.sha256(credential.encode()).digest()


def credential_hash(credential: str) -> str:
    return node_key(credential).hex()


class BadMessage(ValueError):
    """A message that is dropped; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def peek_node(data: bytes) -> tuple[dict[str, Any], str]:
    """The parsed document and the node it claims to be from (before its key is looked up)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage("too_large", f"{len(data)} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage("malformed", f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BadMessage("malformed", "not a JSON object")
    if document.get("v") != VERSION:
        raise BadMessage("version", f"unknown version {document.get('v')!r}")
    node = document.get("node")
    if not isinstance(node, str) or not node:
        raise BadMessage("malformed", "no node name")
    return document, node


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional_str(value: object) -> str | None:
    return None if value is None else _str(value)


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """An agent asking to join (with a join token) or to rejoin (with the credential it was given)."""

    node: str
    address: str | None
    token: str | None = None
    credential: str | None = None
    csr: str | None = None
    """A certificate signing request (PEM) for the node's gRPC server, made with a key that stays on the node."""

    def __repr__(self) -> str:
        csr = ", csr" if self.csr else ""
        return f"RegisterRequest(node={self.node!r}, address={self.address!r}, with={self.proof}{csr})"

    @property
    def proof(self) -> str:
        return "credential" if self.credential else "token" if self.token else "nothing"


@dataclass(frozen=True, slots=True)
class RegisterReply:
    ok: bool
    status: str = ""
    """The node's status after registering: ``pending`` until approved, else ``healthy``."""
    credential: str | None = None
    """Only in the reply to a token: the node's own secret from now on."""
    reason: str = ""
    certificate: str | None = None
    """The node's certificate (PEM) signed by the fleet's CA, when the request carried a CSR and the controller
    has a CA of its own (not with ``--insecure`` or ``--tls-*`` files)."""
    ca: str | None = None
    """The fleet CA's certificate (PEM), with ``certificate``: what the node trusts the controller by."""

    def __repr__(self) -> str:
        return f"RegisterReply(ok={self.ok}, status={self.status!r}, reason={self.reason!r})"


def encode_register(request: RegisterRequest) -> bytes:
    return _canonical(
        {
            "v": VERSION,
            "node": request.node,
            "address": request.address,
            "token": request.token,
            "credential": request.credential,
            "csr": request.csr,
        }
    )


def decode_register(data: bytes) -> RegisterRequest:
    document, node = peek_node(data)
    try:
        return RegisterRequest(
            node,
            _optional_str(document.get("address")),
            _optional_str(document.get("token")),
            _optional_str(document.get("credential")),
            _optional_pem(document.get("csr")),
        )
    except TypeError as exc:
        raise BadMessage("malformed", str(exc)) from None


def encode_reply(reply: RegisterReply) -> bytes:
    return _canonical(
        {
            "v": VERSION,
            "ok": reply.ok,
            "status": reply.status,
            "credential": reply.credential,
            "reason": reply.reason,
            "certificate": reply.certificate,
            "ca": reply.ca,
        }
    )


def decode_reply(data: bytes) -> RegisterReply:
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("v") != VERSION:
            raise BadMessage("version", "not a version 1 reply")
        return RegisterReply(
            bool(document["ok"]),
            _str(document.get("status", "")),
            _optional_str(document.get("credential")),
            _str(document.get("reason", "")),
            _optional_pem(document.get("certificate")),
            _optional_pem(document.get("ca")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BadMessage("malformed", str(exc)) from None


MAX_PEM_CHARS = 16 * 1024
"""A CSR or a certificate of the registration is one small PEM block; anything larger is malformed."""


def _optional_pem(value: object) -> str | None:
    text = _optional_str(value)
    if text is not None and (len(text) > MAX_PEM_CHARS or not text.startswith("-----BEGIN ")):
        raise TypeError(f"expected one PEM block of at most {MAX_PEM_CHARS} characters")
    return text
