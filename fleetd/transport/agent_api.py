"""The ``AgentClient`` protocol: the only way the executor reaches a node (architecture.md §3).

The embedded mode implements it in-process (``fleetd.agent.local``); the distributed mode will implement it over
gRPC. Both must pass ``tests/agent/test_contract.py``. The calls are synchronous and idempotent: ``load`` of a
replica that already runs with the same config hash returns its status, ``unload`` of one that is gone returns
``False``. A call that cannot do its work raises ``AgentError`` with a message for people.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

from fleetd.core.desired import BackendSpec, InstanceSpec
from fleetd.core.observed import ReplicaState


class AgentError(Exception):
    """An agent could not do what it was asked; the message says why and what to do."""


class AgentFenced(AgentError):
    """The agent refused a command: it has seen a newer controller's lease epoch (this controller was deposed)."""


class ReplicaNotFound(AgentError):
    """The node has no such replica (none runs, and no log of one is there): ``node X has no replica chat/3``."""


@dataclass(frozen=True, slots=True)
class CallerFence:
    """The lease a controller's commands carry to an agent: its epoch (and holder, for the agent's log)."""

    epoch: int
    holder: str


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything an agent needs to start one replica. ``config_hash`` is the planner's hash of the launch
    config; the agent reports it back so the planner sees the replica as converged."""

    spec: InstanceSpec
    backend: BackendSpec
    replica: int
    config_hash: str
    vram_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What an agent knows of one replica process it supervises."""

    instance: str
    replica: int
    state: ReplicaState
    config_hash: str
    address: str | None = None
    """``host:port`` where the backend listens."""
    pid: int | None = None
    process_start: str | None = None
    """The process's start time as the OS reports it (with pid and argv, what adoption matches on)."""
    container: str | None = None
    restarts: int = 0
    last_error: str | None = None
    in_flight: int = 0
    last_used_ms: int | None = None
    vram_bytes: int = 0
    log_tail: tuple[str, ...] = ()
    """The last lines of the replica's log, for a failed replica."""


@dataclass(frozen=True, slots=True)
class InstallProgress:
    """One step of a backend install, for a progress bar or an event."""

    backend: str
    step: str
    """``venv``, ``pip``, ``check``, ``pull``, ``done``."""
    message: str
    fraction: float | None = None


@dataclass(frozen=True, slots=True)
class InstallResult:
    backend: str
    executable: str
    """What the replica's argv starts with (a path, or ``docker`` for an image)."""
    version: str
    changed: bool
    """False when the backend was already installed with this recipe."""


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    """The node's facts: GPU vendor (``none`` without a GPU), memory, platform, installed backends."""

    node: str
    gpu_vendor: str
    gpus: tuple[GpuInfo, ...]
    total_vram: int
    available_vram: int
    total_ram: int
    available_ram: int
    platform: str
    """``sys.platform``-machine, e.g. ``linux-x86_64``, ``darwin-arm64``."""
    backends: tuple[str, ...] = ()


ProgressSink = Callable[[InstallProgress], None]
LogStream = Generator[bytes, None, None]
"""A replica's output as it is read, in chunks of bytes as the replica wrote them. While following, an empty
chunk says that nothing new came since the last one; ``close()`` stops following (and cancels a remote read)."""


class ReplicaLogReader(Protocol):
    """Where ``fleetd logs`` reads a replica's output: the node's agent in-process (``LocalAgent``) or over gRPC
    (``GrpcAgentClient``). Not part of ``AgentClient``: the executor never reads logs."""

    @property
    def node(self) -> str: ...

    def replica_logs(self, instance: str, replica: int, *, tail_lines: int, follow: bool) -> LogStream:
        """The replica's last ``tail_lines`` lines, then, with ``follow``, what it writes next, until the
        iterator is closed (it never ends by itself, and yields an empty chunk at least every second or so when
        nothing is written, so that a consumer can stop). Raises ``ReplicaNotFound`` for a replica the node does
        not have, and ``AgentError`` for a read that failed, when called or while iterated."""
        ...


class ModelFiles(Protocol):
    """Which model files one node lacks: every ``AgentClient``, and ``fleetd plan``'s look at its own machine."""

    @property
    def node(self) -> str: ...

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        """The absolute paths among ``paths`` that do not exist on this node (a repository id or URL is never
        missing: it is no file). Read-only; raises ``AgentError`` when the node cannot be asked."""
        ...


class AgentClient(Protocol):
    """Commands to the agent of one node."""

    @property
    def node(self) -> str: ...

    def install_backend(self, backend: BackendSpec, *, progress: ProgressSink | None = None) -> InstallResult:
        """Make ``backend`` runnable here (idempotent; a recipe change re-installs)."""
        ...

    def load(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        """Start the replica and wait until it is healthy, failed, or ``timeout_s`` passed (default: the
        instance's startup timeout). Returns its status; ``state`` says which."""
        ...

    def restart(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        """Replace the replica's process with one started from ``request`` (stop, then start)."""
        ...

    def unload(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool:
        """Stop the replica (SIGTERM, ``grace_s``, SIGKILL); ``False`` when there was none."""
        ...

    def list_replicas(self) -> tuple[ReplicaStatus, ...]:
        """Every replica this agent supervises, sorted by (instance, replica)."""
        ...

    def health(self) -> NodeReport:
        """The node's facts now (GPU memory read live)."""
        ...

    def estimate(self, spec: InstanceSpec) -> int:
        """Bytes of accelerator memory the instance's model needs on this node (``vram: auto``), estimated
        from the model file here: the controller never opens a model, which a remote node's model never
        allows. Raises ``AgentError`` naming the model when this node cannot read it."""
        ...

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        """The absolute paths among ``paths`` that do not exist on this node (``ModelFiles``): asked before a
        plan loads a replica here, so a missing file is reported by the plan instead of by a failed load."""
        ...
