"""The desired state: what the manifest declares, with defaults merged and units resolved.

This is the planner's first input. Every field is already validated and typed: durations in milliseconds,
sizes in bytes, enums instead of strings, mappings as sorted tuples of pairs so the whole value is
immutable, hashable and has a stable digest.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from functools import cached_property

from fleetd.core.canonical import digest

Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by key."""

OptionValue = bool | int | float | str
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class BackendType(enum.StrEnum):
    LLAMA_CPP = "llama_cpp"
    MLX_LM = "mlx_lm"
    VLLM = "vllm"


class InstallKind(enum.StrEnum):
    PIP = "pip"
    BINARY = "binary"
    IMAGE = "image"


class Placement(enum.StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"


class RoutePolicy(enum.StrEnum):
    LEAST_INFLIGHT = "least_inflight"
    ROUND_ROBIN = "round_robin"
    PREFIX_CACHE = "prefix_cache"


@dataclass(frozen=True, slots=True)
class InstallRecipe:
    """How a backend becomes runnable on a node: a pip requirement, a binary path or an image reference."""

    kind: InstallKind
    spec: str


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    type: BackendType
    install: InstallRecipe
    docker_image: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    address: str | None = None
    labels: Labels = ()
    max_replicas_per_model: int = 1
    approved: bool = False
    drain: bool = False


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    auto_restart: bool = True
    max_restarts: int = -1
    """-1 means unlimited."""
    restart_delay_ms: int = 5_000
    restart_max_delay_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    interval_ms: int = 10_000
    timeout_ms: int = 5_000
    startup_timeout_ms: int = 600_000
    failure_threshold: int = 3


STARTUP_BASE_MS = 5 * 60 * 1000
STARTUP_MS_PER_GIB = 20 * 1000


def startup_timeout_ms(base_ms: int, model_bytes: int) -> int:
    """A startup timeout that grows with the model (LocalAI's rule: 5 min + 20 s per GiB), never below
    ``base_ms``: a large model on a slow disk is not declared failed while it is still loading. The agent
    scales by the weights it reads; a controller waiting on a remote load scales by the VRAM the plan gave
    (never less than the weights), so its deadline is never shorter than the agent's own wait."""
    scaled = STARTUP_BASE_MS + STARTUP_MS_PER_GIB * max(model_bytes, 0) // 1024**3
    return max(base_ms, scaled)


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    max_unavailable: int = 0
    max_surge: int = 1


@dataclass(frozen=True, slots=True)
class Scheduling:
    min_replicas: int = 1
    max_replicas: int = 1
    node_selector: Labels = ()
    nodes: tuple[str, ...] | None = None
    """An allow-list of node names; ``None`` means any node."""
    priority: int = 0
    route_policy: RoutePolicy = RoutePolicy.LEAST_INFLIGHT


@dataclass(frozen=True, slots=True)
class EnvValue:
    """An environment value; ``secret`` when it references ``${env:NAME}``, resolved only at apply time."""

    template: str
    secret: bool = False

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(ENV_REFERENCE.findall(self.template))

    def redacted(self) -> str:
        return "(secret)" if self.secret else self.template

    def __repr__(self) -> str:
        return f"EnvValue({self.redacted()!r}, secret={self.secret})"


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str
    backend: str
    model: str
    options: tuple[tuple[str, OptionValue], ...] = ()
    vram_bytes: int | None = None
    """``None`` means ``vram: auto``: estimated from the model file."""
    scheduling: Scheduling = field(default_factory=Scheduling)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    placement: Placement = Placement.BINPACK
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    on_demand_start: bool = False
    idle_timeout_ms: int = 0
    """0 means never unload for idleness."""
    docker_enabled: bool = False
    command_override: tuple[str, ...] | None = None
    environment: tuple[tuple[str, EnvValue], ...] = ()

    @property
    def model_path(self) -> str | None:
        """The file (or directory) the instance's replicas load on their node: ``model`` when it is an absolute
        path and fleetd builds the command. ``None`` for a model repository id or a URL, and with a
        ``command_override``, whose command may load any other file."""
        if self.command_override is not None or not self.model.startswith("/"):
            return None
        return self.model


@dataclass(frozen=True)
class DesiredState:
    """Everything a manifest declares. ``nodes_declared`` is False when the manifest has no ``nodes`` section,
    in which case every approved node is used (and on one machine the local node is implicit)."""

    backends: tuple[BackendSpec, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()
    instances: tuple[InstanceSpec, ...] = ()
    nodes_declared: bool = False

    @cached_property
    def digest(self) -> str:
        """Content digest of the canonical form: equal states, equal digests, whatever the YAML looked like.

        Computed once per value (the state is immutable): a large fleet's digest costs tens of milliseconds.
        """
        return digest(self)

    def instance(self, name: str) -> InstanceSpec | None:
        return next((i for i in self.instances if i.name == name), None)

    def backend(self, name: str) -> BackendSpec | None:
        return next((b for b in self.backends if b.name == name), None)

    def node(self, name: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.name == name), None)
