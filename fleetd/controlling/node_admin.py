"""Node administration by hand (``fleetd node ...``): join tokens, approving, draining and removing nodes.

These are a person's inputs, as a manifest's are: they change the registry directly, unfenced, and the planner
takes them from there on its next cycle. Each function opens the registry at ``database_url`` (default: the
SQLite file under the state dir), does one thing in one transaction, and disposes of it. Refusals raise
``NodeAdminError`` with a one-line message that says what to do; a join token's secret never appears in one.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection

from fleetd.core.observed import NodeStatus
from fleetd.core.units import format_duration
from fleetd.registry import nodes, replicas
from fleetd.registry.facade import Registry, open_registry, open_registry_to_read
from fleetd.registry.join_tokens import IssuedToken, JoinTokenInfo
from fleetd.registry.nodes import UnknownNode

MAX_TOKEN_TTL_MS = 30 * 86_400_000
"""A join token lives at most 30 days: long-lived ones are how a leaked token lets strangers in."""
_TOKEN_ID = re.compile(r"jt-[0-9a-f]{8}")


class NodeAdminError(Exception):
    """A refused request; ``str()`` is a one-line message that names the thing and says what to do."""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as ``fleetd node list`` shows it."""

    name: str
    status: NodeStatus
    approved: bool
    address: str | None
    gpu_vendor: str
    total_vram: int
    available_vram: int
    heartbeat_age_ms: int | None
    """Since the last heartbeat (or registration); ``None`` when it never sent one."""
    last_error: str | None
    replicas: int


@dataclass(frozen=True, slots=True)
class NodeChange:
    """What a command did to a node: its status and approval before and after."""

    name: str
    before: NodeStatus
    after: NodeStatus
    was_approved: bool
    approved: bool

    @property
    def changed(self) -> bool:
        return (self.before, self.was_approved) != (self.after, self.approved)


@dataclass(frozen=True, slots=True)
class RemovedNode:
    name: str
    replicas: tuple[tuple[str, int], ...]
    """The replica rows deleted with it (only with ``force``)."""


def create_token(
    database_url: str | None, ttl_ms: int, uses: int, *, created_by: str | None = None
) -> IssuedToken:
    """A join token for ``uses`` registrations within ``ttl_ms``; its secret is in the result, and only there."""
    if not 0 < ttl_ms <= MAX_TOKEN_TTL_MS:
        raise NodeAdminError(
            f"a join token lives more than 0s and at most {format_duration(MAX_TOKEN_TTL_MS)}, "
            f"not {format_duration(ttl_ms)}"
        )
    if uses < 1:
        raise NodeAdminError(f"a join token allows at least one registration, not {uses}")
    with _registry(database_url) as registry:
        return registry.create_join_token(ttl_ms=ttl_ms, uses=uses, created_by=created_by or _who())


def list_tokens(database_url: str | None) -> tuple[JoinTokenInfo, ...]:
    with _registry(database_url, to_read=True) as registry:
        return registry.list_join_tokens()


def revoke_token(database_url: str | None, token_id: str) -> None:
    """Delete a join token by its id. Input that is not an id is not echoed: it may be the token itself."""
    if not _TOKEN_ID.fullmatch(token_id):
        raise NodeAdminError(
            "not a join token id (ids look like jt-1a2b3c4d); `fleetd node token list` shows them"
        )
    with _registry(database_url) as registry:
        if not registry.revoke_join_token(token_id):
            raise NodeAdminError(f"no join token {token_id}; `fleetd node token list` shows them")


def list_nodes(database_url: str | None) -> tuple[NodeRow, ...]:
    with _registry(database_url, to_read=True) as registry:
        now_ms = registry.clock()
        records = registry.node_records()
    return tuple(
        NodeRow(
            name=r.name,
            status=r.status,
            approved=r.approved,
            address=r.address,
            gpu_vendor=r.gpu_vendor,
            total_vram=r.total_vram,
            available_vram=r.available_vram,
            heartbeat_age_ms=max(0, now_ms - r.last_heartbeat_ms) if r.last_heartbeat_ms is not None else None,
            last_error=r.last_error,
            replicas=r.replicas,
        )
        for r in records
    )


def approve(database_url: str | None, name: str) -> NodeChange:
    """Approve a node: a pending one becomes healthy and can take replicas. What a manifest's ``approved: true``
    for the node makes the planner do (an ``approve_node`` action); either way the approval stays."""

    def act(conn: Connection, now_ms: int) -> None:
        nodes.approve(conn, name, now_ms=now_ms)

    return _change(database_url, name, act)


def drain(database_url: str | None, name: str) -> NodeChange:
    """Stop placing replicas on a node; the planner moves its replicas off. A manifest's ``drain: true`` for
    the node makes the planner drain it too (and drain it again after an ``undrain``, while it says so)."""

    def act(conn: Connection, now_ms: int) -> None:
        nodes.set_draining(conn, name, True, now_ms=now_ms)

    return _change(database_url, name, act)


def undrain(database_url: str | None, name: str) -> NodeChange:
    """A draining node takes replicas again (healthy; pending if it was never approved). A node that is not
    draining is left as it is. While the manifest says ``drain: true`` for it, the planner drains it again."""

    def act(conn: Connection, now_ms: int) -> None:
        nodes.undrain(conn, name, now_ms=now_ms)

    return _change(database_url, name, act)


def remove(database_url: str | None, name: str, *, force: bool = False) -> RemovedNode:
    """Forget a node (its labels, backends and reservations go with it). Refused while replica rows name it,
    unless ``force``: then those rows are deleted too (their processes, if any, are not stopped; an agent that
    comes back reports them, and the next plan stops what is not wanted). A node whose agent still runs
    registers again, as pending."""
    with _registry(database_url) as registry, registry.engine.begin() as conn:
        _locked(conn, name)
        held = replicas.on_node(conn, name)
        if held and not force:
            shown = ", ".join(f"{instance}/{index}" for instance, index in held[:3])
            more = f" and {len(held) - 3} more" if len(held) > 3 else ""
            raise NodeAdminError(
                f"node {name!r} still has {len(held)} replica row{'s' if len(held) != 1 else ''} ({shown}{more}); "
                f"drain it (`fleetd node drain {name}`) and let the controller move them, "
                f"or delete them with it (`fleetd node remove {name} --force`)"
            )
        nodes.remove(conn, name)
    return RemovedNode(name, held)


def _change(database_url: str | None, name: str, act: Callable[[Connection, int], None]) -> NodeChange:
    with _registry(database_url) as registry, registry.engine.begin() as conn:
        before, was_approved = _locked(conn, name)
        act(conn, registry.clock())
        after, approved = nodes.lock(conn, name)
    return NodeChange(name, before, after, was_approved, approved)


def _locked(conn: Connection, name: str) -> tuple[NodeStatus, bool]:
    try:
        return nodes.lock(conn, name)
    except UnknownNode:
        raise NodeAdminError(f"no node named {name!r} in the registry; `fleetd node list` lists them") from None


@contextmanager
def _registry(database_url: str | None, *, to_read: bool = False) -> Iterator[Registry]:
    """The registry; ``to_read``: for a listing, which works on a registry this user cannot write."""
    registry = open_registry_to_read(database_url) if to_read else open_registry(database_url)
    try:
        yield registry
    finally:
        registry.engine.dispose()


def _who() -> str:
    """``user@host`` for a token's ``created_by``; a user without a name (a container's) is shown by uid."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
