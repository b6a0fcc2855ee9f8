"""Per-backend knowledge, one module per backend type (architecture.md §2), and the one table that dispatches.

Each module exposes a ``RUNTIME: RuntimeSpec`` value (the options the backend accepts, with their flags and
value kinds, the options fleetd sets itself, the platforms it runs on), an ``argv`` builder, its container
executable, its ``PROBES`` paths and a ``parse_in_flight`` reader. This layer is pure data and pure functions;
the agent does the I/O with what it says. Nothing outside ``runtimes`` branches on backend type: everything
else goes through ``runtime_for``, ``build_command``, ``probe_spec`` and ``parse_in_flight``.
"""

from __future__ import annotations

from fleetd.core.desired import BackendType
from fleetd.runtimes import llama_cpp, mlx_lm, vllm
from fleetd.runtimes.commands import Command, Launcher, MissingEnvironment, build_command, resolve_environment
from fleetd.runtimes.probes import InFlightParser, ProbeSpec, parse_in_flight, probe_spec
from fleetd.runtimes.spec import RuntimeSpec

__all__ = [
    "LAUNCHERS",
    "PROBES",
    "RUNTIMES",
    "Command",
    "Launcher",
    "MissingEnvironment",
    "ProbeSpec",
    "build_command",
    "launcher_for",
    "parse_in_flight",
    "probe_spec",
    "probes_for",
    "resolve_environment",
    "runtime_for",
]

RUNTIMES: dict[BackendType, RuntimeSpec] = {
    BackendType.LLAMA_CPP: llama_cpp.RUNTIME,
    BackendType.MLX_LM: mlx_lm.RUNTIME,
    BackendType.VLLM: vllm.RUNTIME,
}

LAUNCHERS: dict[BackendType, Launcher] = {
    BackendType.LLAMA_CPP: Launcher(llama_cpp.argv, llama_cpp.CONTAINER_EXECUTABLE),
    BackendType.MLX_LM: Launcher(mlx_lm.argv, mlx_lm.CONTAINER_EXECUTABLE),
    BackendType.VLLM: Launcher(vllm.argv, vllm.CONTAINER_EXECUTABLE),
}

PROBES: dict[BackendType, tuple[ProbeSpec, InFlightParser]] = {
    BackendType.LLAMA_CPP: (llama_cpp.PROBES, llama_cpp.parse_in_flight),
    BackendType.MLX_LM: (mlx_lm.PROBES, mlx_lm.parse_in_flight),
    BackendType.VLLM: (vllm.PROBES, vllm.parse_in_flight),
}


def runtime_for(backend_type: BackendType) -> RuntimeSpec:
    return RUNTIMES[backend_type]


def launcher_for(backend_type: BackendType) -> Launcher:
    return LAUNCHERS[backend_type]


def probes_for(backend_type: BackendType) -> tuple[ProbeSpec, InFlightParser]:
    return PROBES[backend_type]
