"""How a replica is started: the argv and the environment of one backend process, as a pure value.

The agent runs what ``build_command`` returns without a shell (``subprocess`` with an argv, never a string),
so a model path or an option value can never be interpreted as shell syntax. Environment values travel only in
``Command.env`` (the agent adds them to the child's environment): they never appear in the argv, where ``ps``
would show them, nor in ``Command.redacted()``, which is what logs and errors print.

Which argv a backend type takes is decided by its module under ``runtimes`` (through the dispatch table in
``fleetd.runtimes``); this module holds what is common to all of them: option flags, ``${env:NAME}``
resolution, ``command_override`` and the choice between running the backend directly or in docker.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fleetd.core.desired import ENV_REFERENCE, BackendSpec, InstallKind, InstanceSpec, OptionValue
from fleetd.runtimes.docker import CONTAINER_HOST, container_name, docker_run_argv
from fleetd.runtimes.spec import OptionSpec

HOST_VARIABLE = "HOST"
"""With ``command_override``, the address the replica must bind, passed in this environment variable."""
PORT_VARIABLE = "PORT"
"""With ``command_override``, the port the replica must listen on, passed in this environment variable."""


@dataclass(frozen=True, slots=True)
class Command:
    """One backend process to start: an argv run without a shell and the variables to add to its environment."""

    argv: tuple[str, ...]
    """No shell, ever: each element is one argument as the program receives it."""
    env: tuple[tuple[str, str], ...]
    """Variables to add to the agent's environment for this process, sorted by name."""
    container: str | None = None
    """The docker container's name when the replica runs in docker, so the agent can find it again."""

    def redacted(self) -> str:
        """The command for logs: the variables' names (never their values), then the argv, shell-quoted."""
        names = [f"{name}=***" for name, _ in self.env]
        return " ".join([*names, shlex.join(self.argv)])


class MissingEnvironment(Exception):
    """An instance's ``environment`` references ``${env:NAME}`` and NAME is not set where the agent runs."""

    def __init__(self, instance: str, key: str, variable: str) -> None:
        self.instance = instance
        self.key = key
        self.variable = variable
        super().__init__(
            f"instance {instance}: environment variable {key} references ${{env:{variable}}}, but {variable} "
            "is not set in the environment of the fleetd agent; export it there (for a systemd service, with "
            "Environment= or EnvironmentFile=) and apply again"
        )


class ArgvBuilder(Protocol):
    """What each backend module provides: the backend's own argv for one replica."""

    def __call__(self, spec: InstanceSpec, *, executable: str, host: str, port: int) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Launcher:
    """What ``build_command`` needs to know of one backend type (an entry of the dispatch table)."""

    argv: ArgvBuilder
    container_executable: str
    """The backend's program inside its docker image."""


def resolve_environment(spec: InstanceSpec, source: Mapping[str, str]) -> dict[str, str]:
    """The instance's environment with every ``${env:NAME}`` replaced by ``source[NAME]``.

    Raises ``MissingEnvironment`` naming the instance, the key and the variable for the first reference that
    ``source`` lacks (in key order, so the same inputs always name the same variable).
    """
    resolved: dict[str, str] = {}
    for key, value in sorted(spec.environment):
        for variable in value.references:
            if variable not in source:
                raise MissingEnvironment(spec.name, key, variable)
        resolved[key] = ENV_REFERENCE.sub(lambda match: source[match.group(1)], value.template)
    return resolved


def option_arguments(options: tuple[tuple[str, OptionValue], ...], table: Mapping[str, OptionSpec]) -> list[str]:
    """The flags for ``options``, sorted by option name so that equal options give an equal argv.

    ``True`` is a bare flag and ``False`` is omitted, except for options that take ``on``/``off``
    (llama-server's ``--flash-attn``), which get ``on`` or ``off``. Other values are ``flag value``.
    An option missing from ``table`` (the manifest rejects those) becomes ``--kebab-case``.
    """
    arguments: list[str] = []
    for name, value in sorted(options, key=lambda pair: pair[0]):
        spec = table.get(name)
        flag = spec.flag if spec is not None else "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if spec is not None and spec.choices is not None and {"on", "off"} <= spec.choices:
                arguments += [flag, "on" if value else "off"]
            elif value:
                arguments.append(flag)
        else:
            arguments += [flag, str(value)]
    return arguments


def model_server_argv(
    spec: InstanceSpec,
    table: Mapping[str, OptionSpec],
    *,
    executable: str,
    host: str,
    port: int,
    extra: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """``EXECUTABLE --model M --host H --port P [extra]`` then the options' flags by name: the shape that
    llama-server and mlx_lm.server share."""
    return (
        executable,
        "--model",
        spec.model,
        "--host",
        host,
        "--port",
        str(port),
        *extra,
        *option_arguments(spec.options, table),
    )


def build_command(
    spec: InstanceSpec,
    backend: BackendSpec,
    *,
    executable: str,
    host: str,
    port: int,
    replica: int,
    environment: Mapping[str, str],
    gpu_vendor: str = "none",
) -> Command:
    """The process that runs replica ``replica`` of ``spec`` on ``backend``, listening on ``host:port``.

    ``environment`` is added to the process's environment as given (the caller resolves it, or keeps
    templates and resolves them at each start). ``command_override`` replaces the whole argv; the replica then
    learns its address from ``HOST`` and ``PORT``. ``docker_enabled`` wraps the backend in ``docker run``.
    """
    from fleetd.runtimes import launcher_for  # the dispatch table imports this module

    return build_command_with(
        launcher_for(backend.type),
        spec,
        backend,
        executable=executable,
        host=host,
        port=port,
        replica=replica,
        environment=environment,
        gpu_vendor=gpu_vendor,
    )


def build_command_with(
    launcher: Launcher,
    spec: InstanceSpec,
    backend: BackendSpec,
    *,
    executable: str,
    host: str,
    port: int,
    replica: int,
    environment: Mapping[str, str],
    gpu_vendor: str = "none",
) -> Command:
    """``build_command`` with the backend type's entry of the dispatch table given explicitly."""
    if not spec.docker_enabled:
        if spec.command_override is not None:
            env = {**environment, HOST_VARIABLE: host, PORT_VARIABLE: str(port)}
            return Command(argv=tuple(spec.command_override), env=tuple(sorted(env.items())))
        argv = launcher.argv(spec, executable=executable, host=host, port=port)
        return Command(argv=argv, env=tuple(sorted(environment.items())))

    image = docker_image(backend)
    if spec.command_override is not None:
        inner = tuple(spec.command_override)
        env = {**environment, HOST_VARIABLE: CONTAINER_HOST, PORT_VARIABLE: str(port)}
    else:
        inner = launcher.argv(spec, executable=launcher.container_executable, host=CONTAINER_HOST, port=port)
        env = dict(environment)
    name = container_name(spec.name, replica)
    argv = docker_run_argv(
        docker=executable if _basename(executable) == "docker" else "docker",
        name=name,
        instance=spec.name,
        replica=replica,
        host=host,
        port=port,
        gpu_vendor=gpu_vendor,
        env_names=tuple(sorted(env)),
        model=spec.model,
        image=image,
        container_argv=inner,
    )
    return Command(argv=argv, env=tuple(sorted(env.items())), container=name)


def docker_image(backend: BackendSpec) -> str:
    """The image a docker-enabled instance of ``backend`` runs: its ``docker_image``, else its install image."""
    if backend.docker_image is not None:
        return backend.docker_image
    if backend.install.kind is InstallKind.IMAGE:
        return backend.install.spec
    raise ValueError(
        f"backend {backend.name} has no docker_image (nor an image install), so instances on it cannot set "
        f"docker_enabled: true; set backends.{backend.name}.docker_image"
    )


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]
