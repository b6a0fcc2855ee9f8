"""Node credentials (architecture.md §3): the registry keeps only the SHA-256 of the credential a node
receives when it registers, so that a copy of the registry cannot sign a heartbeat or act as a node.

The node keeps the secret in its state dir; whoever verifies it hashes what the node presents and compares
with ``credential_hash``. ``secret_hash`` is the one definition of that hash, join tokens use it too.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import Connection, select, update

from fleetd.registry.nodes import UnknownNode
from fleetd.registry.tables import nodes

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def secret_hash(secret: str) -> str:
    """SHA-256 of a secret (a join token, a node credential), lowercase hex: what the registry stores."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def set_credential(conn: Connection, node: str, credential_hash: str | None) -> None:
    """Record the hash of ``node``'s credential (``None`` withdraws it: nothing verifies against it then).

    Refuses anything but a SHA-256 hex digest, so that a credential itself is never stored by mistake.
    """
    if credential_hash is not None and not _SHA256_HEX.fullmatch(credential_hash):
        raise ValueError("a node credential is stored as its SHA-256 hex digest (secret_hash), never as itself")
    result = conn.execute(update(nodes).where(nodes.c.name == node).values(credential_hash=credential_hash))
    if result.rowcount == 0:
        raise UnknownNode(node)


def credential_hashes(conn: Connection) -> dict[str, str]:
    """Every node's credential hash by name, in one query (a controller warming its heartbeat keys)."""
    rows = conn.execute(select(nodes.c.name, nodes.c.credential_hash).where(nodes.c.credential_hash.is_not(None)))
    return {str(name): str(hashed) for name, hashed in rows}


def credential_hash(conn: Connection, node: str) -> str | None:
    """The hash of ``node``'s credential; ``None`` when it has none or is not registered (nothing verifies)."""
    found: str | None = conn.execute(
        select(nodes.c.credential_hash).where(nodes.c.name == node)
    ).scalar_one_or_none()
    return found


def joined(conn: Connection) -> tuple[tuple[str, str], ...]:
    """(name, address) of every node that joined over the bus (it has a credential) and said where its agent
    listens: the controller reaches these over gRPC and observes them through their heartbeats."""
    rows = conn.execute(
        select(nodes.c.name, nodes.c.address)
        .where(nodes.c.credential_hash.is_not(None), nodes.c.address.is_not(None))
        .order_by(nodes.c.name)
    )
    return tuple((name, address) for name, address in rows)
