"""Where ``fleetd logs INSTANCE[/N]`` reads a replica's output: the CLI parses and prints, this module decides.

The registry says which node holds the replica (its replica rows) and how that node's agent is reached (the
address recorded for the node: the one its agent registered, or the manifest's, recorded when a controller
first polled it). A node without an address is a controller machine's in-process agent (``local`` in the
embedded mode): when its log is in this machine's state dir, the file is read there directly, with
``fleetd.agent.log_reading`` (no agent is started: it would adopt the replicas). Any other node is asked over
gRPC (``ReplicaLogs`` on its ``fleetd agent``), secured as the other commands reach agents (``AgentAccess``).

Nothing here writes: the registry is opened without migrating it, and a missing SQLite registry is reported,
not created. Every refusal is a ``LogsError`` whose message is one line that names what and says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetd.agent.log_reading import read_log, replica_log_path, rotated_path
from fleetd.controlling.opening import AgentAccess
from fleetd.registry.engine import (
    Access,
    default_database_url,
    default_state_dir,
    normalise_url,
    registry_access,
    sqlite_file,
)
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.replicas import ReplicaPlace
from fleetd.transport.agent_api import AgentError, LogStream, ReplicaNotFound
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import SecurityError


class LogsError(Exception):
    """The log cannot be read; ``str()`` is one line naming what and what to do."""


@dataclass(frozen=True, slots=True)
class LogsRequest:
    instance: str
    index: int | None = None
    """``None``: the instance's only replica (refused when it has several)."""
    node: str | None = None
    """Which node's replica ``index`` is, when two nodes have one of that index (a replacement under way)."""
    tail_lines: int = 100
    follow: bool = False


@dataclass(frozen=True, slots=True)
class ReplicaLog:
    place: ReplicaPlace
    source: str
    """Where the log is read, for people: a file of this machine's state dir, or a node's agent."""
    chunks: LogStream
    """The output; raises ``LogsError`` while iterated (an agent that went away, an unreadable file)."""


def open_replica_log(
    request: LogsRequest, *, database_url: str | None, access: AgentAccess, state_dir: Path | None = None
) -> ReplicaLog:
    """Find the replica in the registry and open its log. Raises ``LogsError``; a database failure raises
    ``SQLAlchemyError`` (the CLI names the registry)."""
    registry = _existing_registry(database_url)
    try:
        place = choose(registry.replica_places(request.instance), request)
    finally:
        registry.engine.dispose()
    if place.node_address is None:
        return _local_log(place, request, state_dir or default_state_dir())
    return _remote_log(place, request, access)


def choose(places: Sequence[ReplicaPlace], request: LogsRequest) -> ReplicaPlace:
    """The one replica ``request`` names among the instance's ``places``, or ``LogsError`` saying how to name
    one."""
    instance = request.instance
    if not places:
        raise LogsError(
            f"no replica of {instance} in the registry: `fleetd status` lists the replicas (is {instance} an "
            "instance of the applied manifest?)"
        )
    if request.index is None:
        if len({(p.replica, p.node) for p in places}) > 1:
            raise LogsError(f"{_described(places)}: name one as {instance}/N")
        return places[0]
    found = [p for p in places if p.replica == request.index and request.node in (None, p.node)]
    if not found:
        where = f" on node {request.node}" if request.node is not None else ""
        raise LogsError(f"no replica {instance}/{request.index}{where} in the registry: {_described(places)}")
    if len(found) > 1:
        nodes = ", ".join(p.node for p in found)
        raise LogsError(f"{instance}/{request.index} is on nodes {nodes}: name one with --node")
    return found[0]


def _described(places: Sequence[ReplicaPlace]) -> str:
    """``tiny has replicas 0, 1 (on local, gpu-a)``."""
    indexes = ", ".join(str(i) for i in dict.fromkeys(p.replica for p in places))
    nodes = ", ".join(dict.fromkeys(p.node for p in places))
    noun = "replica" if len({p.replica for p in places}) == 1 else "replicas"
    return f"{places[0].instance} has {noun} {indexes} (on {nodes})"


def _existing_registry(database_url: str | None) -> Registry:
    """The registry, opened for reading; a SQLite file that does not exist is an error, never created."""
    url = normalise_url(database_url or default_database_url())
    database = sqlite_file(url)
    if database is not None and not database.exists():
        raise LogsError(
            f"no registry at {database}: nothing was applied with this state dir; run `fleetd apply` or "
            "`fleetd serve` first, or point $FLEETD_STATE_DIR or --database-url at the fleet's registry"
        )
    return open_registry(url, migrate=False, read_only=registry_access(url) is Access.READ_ONLY)


def _local_log(place: ReplicaPlace, request: LogsRequest, state_dir: Path) -> ReplicaLog:
    """A replica of this machine's in-process agent: its log file, read here."""
    log = replica_log_path(state_dir, place.instance, place.replica)
    if not (log.exists() or rotated_path(log).exists()):
        raise LogsError(
            f"node {place.node} has no agent address in the registry, and this machine's state dir ({state_dir}) "
            f"has no log of {place.instance}/{place.replica}: run `fleetd logs` on the machine that runs node "
            f"{place.node}, with its state dir ($FLEETD_STATE_DIR)"
        )
    chunks = read_log(log, tail=request.tail_lines, follow=request.follow)
    return ReplicaLog(place, f"{log}", _guarded(chunks, place))


def _remote_log(place: ReplicaPlace, request: LogsRequest, access: AgentAccess) -> ReplicaLog:
    """A replica of a node with a ``fleetd agent``: its log, streamed over gRPC."""
    assert place.node_address is not None
    try:
        security = access.security()
    except SecurityError as exc:
        raise LogsError(str(exc)) from None
    client = GrpcAgentClient(place.node, place.node_address, security)
    chunks = client.replica_logs(
        place.instance, place.replica, tail_lines=request.tail_lines, follow=request.follow
    )
    source = f"node {place.node} ({security.mark}{place.node_address})"
    return ReplicaLog(place, source, _guarded(chunks, place, client.close))


def _guarded(chunks: LogStream, place: ReplicaPlace, close: Callable[[], None] | None = None) -> LogStream:
    """``chunks`` with their failures as ``LogsError``; closing it closes them (a remote call is cancelled)."""
    try:
        yield from chunks
    except ReplicaNotFound as exc:
        raise LogsError(
            f"{exc}, though the registry lists it: it was stopped or moved since; `fleetd status` shows the "
            "replicas as they are now"
        ) from None
    except AgentError as exc:
        raise LogsError(" ".join(str(exc).split())) from None
    except OSError as exc:
        raise LogsError(
            f"cannot read the log of {place.instance}/{place.replica}: {exc.strerror or exc}: {exc.filename}"
        ) from None
    finally:
        chunks.close()
        if close is not None:
            close()
