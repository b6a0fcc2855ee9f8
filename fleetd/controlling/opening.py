"""Which fleet a controller opens for a manifest: embedded, or distributed (architecture.md §3).

A manifest none of whose nodes has an ``address`` runs embedded: one in-process agent, as before, unless nodes
joined over the bus (or ``serve`` runs one). A node with an address, or one that joined, makes the fleet
distributed: a ``GrpcAgentClient`` per remote node, secured as ``AgentAccess`` says (mutual TLS with the fleet's
own CA or with given files, or ``--insecure`` chosen out loud), and the in-process agent for the one declared
node without an address, if any. ``plan``, ``apply``, ``status`` and ``serve`` all open their fleet here, so the
mode never depends on which command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetd.agent.local import LocalAgent
from fleetd.agent.model_files import LocalModelFiles
from fleetd.controlling.distributed import DistributedFleet, Layout, layout_of
from fleetd.controlling.embedded import LOCAL_NODE, EmbeddedFleet, open_embedded
from fleetd.core.desired import DesiredState
from fleetd.executing.records import heartbeat, node_facts
from fleetd.registry.agent_reports import record_report
from fleetd.registry.engine import default_state_dir
from fleetd.registry.facade import open_registry
from fleetd.transport.agent_api import CallerFence, ModelFiles
from fleetd.transport.certificates import CA_CERT, fleet_security
from fleetd.transport.grpc_client import GrpcAgentClient
from fleetd.transport.security import Security, SecurityError, TlsFiles, load_security

OpenFleet = EmbeddedFleet | DistributedFleet
FenceSource = Callable[[], CallerFence | None]


@dataclass(frozen=True, slots=True)
class AgentAccess:
    """How this controller reaches remote agents: its TLS files, or ``insecure``, or else (the default) a client
    certificate from the fleet's CA in ``ca_dir`` (``<state-dir>/tls``, made by ``fleetd serve``). Read only when
    the manifest has remote nodes, so an embedded fleet needs none of them."""

    tls: TlsFiles | None = None
    insecure: bool = False
    ca_dir: Path | None = None

    @property
    def fleet_ca(self) -> bool:
        """Whether the agents are reached with the fleet's own CA (no ``--tls-*`` files, no ``--insecure``)."""
        return self.tls is None and not self.insecure and self.ca_dir is not None

    @property
    def usable(self) -> bool:
        """Whether ``security`` can answer without an error (for optional reads such as estimates)."""
        if self.fleet_ca:
            assert self.ca_dir is not None
            return (self.ca_dir / CA_CERT).exists()
        return self.tls is not None or self.insecure

    def security(self) -> Security:
        """Raises ``SecurityError`` naming the flags or the file."""
        if self.fleet_ca:
            assert self.ca_dir is not None
            try:
                return fleet_security(self.ca_dir)
            except SecurityError as exc:
                raise SecurityError(
                    f"{exc}; else give --tls-cert, --tls-key and --tls-ca (or --insecure)"
                ) from None
        return load_security(self.tls, insecure=self.insecure, who="fleetd (the manifest's nodes have addresses)")


def no_fence() -> CallerFence | None:
    return None


def open_fleet(
    desired: DesiredState | None,
    *,
    database_url: str | None,
    access: AgentAccess,
    fence: FenceSource = no_fence,
    state_dir: Path | None = None,
    layout: Callable[[], Layout] | None = None,
    on_replica_change: Callable[[], None] | None = None,
    sweeps: bool = True,
) -> OpenFleet:
    """The fleet ``desired`` describes, with the nodes that joined over the bus. ``layout`` (default:
    ``desired``'s and the registry's joined nodes, fixed) is re-read by a distributed fleet at each observation,
    so that ``serve`` follows edits of the nodes' addresses and new joins. ``sweeps``: see ``DistributedFleet``.
    Raises ``SecurityError`` when the fleet has remote nodes and ``access`` cannot be used."""
    state = state_dir or default_state_dir()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    registry = open_registry(database_url or f"sqlite:///{state / 'fleetd.db'}")
    initial = layout() if layout is not None else layout_of(desired, joined=registry.joined_nodes())
    if not initial.distributed:
        registry.engine.dispose()
        return open_embedded(state_dir, database_url=database_url, on_replica_change=on_replica_change)
    try:
        security = access.security()
    except Exception:
        registry.engine.dispose()
        raise
    local = None
    if initial.local is not None:
        local = LocalAgent(initial.local, state, on_replica_change=on_replica_change)
        local.start()
        report = local.health()
        registry.register_node(initial.local, node_facts(report))
        registry.approve_node(initial.local)  # this machine: trusted by definition, as in the embedded mode
        record_report(registry, heartbeat(report), report.backends)
    return DistributedFleet(
        registry, security, layout=layout or (lambda: initial), fence=fence, local=local, sweeps=sweeps
    )


def estimate_readers(desired: DesiredState, access: AgentAccess | None) -> dict[str, GrpcAgentClient]:
    """Clients of the remote nodes for read-only calls (estimates), when ``access`` says how to reach them."""
    layout = layout_of(desired)
    if access is None or not layout.distributed or not access.usable:
        return {}
    security = access.security()
    return {name: GrpcAgentClient(name, address, security) for name, address in layout.remote}


def local_model_files(desired: DesiredState) -> dict[str, ModelFiles]:
    """This machine's node (the embedded mode's, or the one declared without an address), asked about model
    files by looking at this machine's disk: ``fleetd plan`` starts no agent, and this node's agent is the one
    a ``serve`` or ``apply`` on this machine would run in-process."""
    layout = layout_of(desired)
    node = layout.local if layout.distributed else LOCAL_NODE
    return {node: LocalModelFiles(node)} if node is not None else {}


def fleet_kind(layout: Layout) -> tuple[bool, str | None]:
    """What decides whether an open fleet still fits the manifest: distributed or not, and the local node."""
    return (layout.distributed, layout.local if layout.distributed else None)
