"""``LocalAgent``: the in-process ``AgentClient`` of the embedded mode (and, behind gRPC, of ``fleetd agent``).

It turns the executor's commands into work for this node's supervisor: a ``load`` resolves the backend's
installed executable, takes a port, builds the argv (``fleetd.runtimes``; nothing here branches on backend
type) and waits until the replica is healthy or failed. Every command is idempotent: loading a replica that
already runs with the same config hash returns it; unloading one that is gone answers ``False``.

With declared facts (``--facts``) its health report is the declared hardware; the free VRAM is then counted from
the replicas it runs, since nothing measures a declared GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from fleetd.agent.estimates import VramEstimates
from fleetd.agent.installing import install_backend, installed_backends, installed_executable
from fleetd.agent.log_reading import read_log, rotated_path
from fleetd.agent.model_files import missing_model_paths
from fleetd.agent.node_facts import DeclaredFacts, declared_report, read_node_facts, read_ram
from fleetd.agent.port_moves import port_slots
from fleetd.agent.ports import PortAllocator, PortsExhausted
from fleetd.agent.supervisor import Launch, Prober, Supervisor, default_prober
from fleetd.agent.vram_estimate import EstimateError, estimate_instance
from fleetd.core.desired import BackendSpec, HealthPolicy, InstanceSpec, startup_timeout_ms
from fleetd.core.names import name_problem
from fleetd.core.observed import ReplicaState
from fleetd.runtimes import build_command
from fleetd.runtimes.commands import Command
from fleetd.transport.agent_api import (
    AgentError,
    InstallResult,
    LaunchRequest,
    LogStream,
    NodeReport,
    ProgressSink,
    ReplicaNotFound,
    ReplicaStatus,
)

STARTUP_SLACK_S = 5.0
"""Waited beyond the startup timeout, so the supervisor's own verdict (restart or fail) arrives first."""


class LocalAgent:
    """The agent of this machine; ``start()`` adopts what an earlier agent left running."""

    def __init__(
        self,
        node: str,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        ports: PortAllocator | None = None,
        prober: Prober = default_prober,
        stable_after_s: float = 60.0,
        on_replica_change: Callable[[], None] | None = None,
        facts: DeclaredFacts | None = None,
    ) -> None:
        """``on_replica_change``: called when a replica's state changes (see ``Supervisor``). ``facts``: the
        hardware ``--facts`` declares, reported in place of what NVML and psutil detect."""
        self._node = node
        self._facts = facts
        self._state_dir = state_dir
        self._host = host
        self._ports = ports or PortAllocator(host=host)
        self._supervisor = Supervisor(
            state_dir / "agent",
            ports=self._ports,
            prober=prober,
            stable_after_s=stable_after_s,
            on_change=on_replica_change,
        )
        self._locks: dict[tuple[str, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._gpu_vendor: str | None = None
        self._estimates = VramEstimates()

    @property
    def node(self) -> str:
        return self._node

    def start(self) -> None:
        self._supervisor.start()

    def close(self, *, stop_replicas: bool = False) -> None:
        self._supervisor.close(stop_replicas=stop_replicas)

    def alive(self) -> bool:
        return self._supervisor.alive()

    def install_backend(self, backend: BackendSpec, *, progress: ProgressSink | None = None) -> InstallResult:
        return install_backend(backend, state_dir=self._state_dir, progress=progress)

    def load(
        self, request: LaunchRequest, *, timeout_s: float | None = None, secrets: Mapping[str, str] | None = None
    ) -> ReplicaStatus:
        """``secrets``: values for the instance's ``${env:NAME}`` references, resolved by the controller and
        sent with the load; the supervisor keeps them in memory only (see ``Supervisor.start_replica``). A
        replica that already runs with this config keeps running; the values sent now serve its next restart."""
        key = (request.spec.name, request.replica)
        with self._lock_for(key):
            current = self._supervisor.get(*key)
            if (
                current is not None
                and current.config_hash == request.config_hash
                and current.state is not ReplicaState.FAILED
            ):
                self._supervisor.remember_secrets(*key, secrets or {})
                return self._wait(request, timeout_s)
            if current is not None:
                self._supervisor.stop(*key)
            self._supervisor.start_replica(self._launch(request), secrets=secrets)
            return self._wait(request, timeout_s)

    def restart(
        self, request: LaunchRequest, *, timeout_s: float | None = None, secrets: Mapping[str, str] | None = None
    ) -> ReplicaStatus:
        """Stop, then start with the new config (the planner reserved room for both when it chose surge);
        ``secrets`` as in ``load``."""
        key = (request.spec.name, request.replica)
        with self._lock_for(key):
            self._supervisor.stop(*key)
            self._supervisor.start_replica(self._launch(request), secrets=secrets)
            return self._wait(request, timeout_s)

    def unload(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool:
        with self._lock_for((instance, replica)):
            return self._supervisor.stop(instance, replica, grace_s=grace_s)

    def list_replicas(self) -> tuple[ReplicaStatus, ...]:
        return self._supervisor.list()

    def health(self) -> NodeReport:
        backends = installed_backends(state_dir=self._state_dir)
        if self._facts is not None:
            # A failed replica's process is gone and holds nothing; one waiting to restart will hold it again.
            held = sum(r.vram_bytes for r in self._supervisor.list() if r.state is not ReplicaState.FAILED)
            report = declared_report(
                self._node, self._facts, replicas_vram=held, backends=backends, available_ram=read_ram().available
            )
        else:
            report = read_node_facts(self._node, backends=backends)
        self._gpu_vendor = report.gpu_vendor
        return report

    def estimate(self, spec: InstanceSpec) -> int:
        try:
            return self._estimates.one(spec)
        except EstimateError as exc:
            raise AgentError(f"node {self._node}: cannot estimate the VRAM of {spec.name}: {exc}") from exc

    def replica_logs(self, instance: str, replica: int, *, tail_lines: int, follow: bool) -> LogStream:
        """The replica's output from its log file (``fleetd.agent.log_reading.read_log``): a replica this agent
        supervises, or one whose log is still here after it stopped. Raises ``ReplicaNotFound`` otherwise, and
        for a name that is no instance name (it must not make a path outside the replicas' directory)."""
        missing = ReplicaNotFound(f"node {self._node} has no replica {instance}/{replica}")
        if name_problem(instance) is not None:
            raise missing
        log = self._supervisor.log_path(instance, replica)
        if self._supervisor.get(instance, replica) is None and not (log.exists() or rotated_path(log).exists()):
            raise missing
        return read_log(log, tail=tail_lines, follow=follow)

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        return missing_model_paths(paths)

    # helpers ------------------------------------------------------------------------------------------------

    def _launch(self, request: LaunchRequest) -> Launch:
        spec, backend = request.spec, request.backend
        executable = installed_executable(backend, state_dir=self._state_dir)
        if executable is None:
            raise AgentError(
                f"backend {backend.name} is not installed on node {self._node}: apply a plan with its "
                "install_backend action first"
            )
        try:
            port = self._ports.allocate()
        except PortsExhausted as exc:
            raise AgentError(f"node {self._node}: {exc}") from exc
        templates = {key: value.template for key, value in spec.environment}
        if self._gpu_vendor is None:
            self.health()

        def command_at(at: int) -> Command:
            return build_command(
                spec,
                backend,
                executable=executable,
                host=self._host,
                port=at,
                replica=request.replica,
                environment=templates,
                gpu_vendor=self._gpu_vendor or "none",
            )

        command = command_at(port)
        return Launch(
            instance=spec.name,
            replica=request.replica,
            backend_type=backend.type,
            argv=command.argv,
            env=command.env,
            host=self._host,
            port=port,
            config_hash=request.config_hash,
            vram_bytes=request.vram_bytes,
            restart=spec.restart,
            health=_health_policy(spec),
            container=command.container,
            port_slots=port_slots(lambda at: command_at(at).argv, port),
        )

    def _wait(self, request: LaunchRequest, timeout_s: float | None) -> ReplicaStatus:
        if timeout_s is None:
            launch = self._supervisor.launch_of(request.spec.name, request.replica)
            health = launch.health if launch is not None else request.spec.health
            timeout_s = health.startup_timeout_ms / 1000 + STARTUP_SLACK_S
        status = self._supervisor.wait(request.spec.name, request.replica, timeout_s=timeout_s)
        if status is None:
            raise AgentError(f"replica {request.spec.name}/{request.replica} was unloaded while starting")
        return status

    def _lock_for(self, key: tuple[str, int]) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())


def _health_policy(spec: InstanceSpec) -> HealthPolicy:
    """The instance's health policy; with ``vram: auto`` the startup timeout grows with the model's size (a
    fixed deadline fails large models: 5 minutes + 20 s per GiB of weights, never below the manifest's)."""
    if spec.vram_bytes is not None:
        return spec.health
    try:
        weights = estimate_instance(spec).weights
    except EstimateError:
        return spec.health  # the load itself will report the missing model
    return replace(spec.health, startup_timeout_ms=startup_timeout_ms(spec.health.startup_timeout_ms, weights))
