"""``GrpcAgentClient``: the ``AgentClient`` of a remote node, over gRPC to its ``fleetd agent``
(architecture.md §3).

Every call has a deadline, so a dead or hung node costs a cycle at most that long and never hangs it: reads
(``health``, ``list_replicas``, ``missing_models``; ``estimate`` longer) a few seconds; ``unload`` its grace
period more; ``load`` and ``restart`` the instance's startup timeout scaled by the model's size (what the agent
itself waits) plus slack; ``install_backend`` an hour, while HTTP/2 keepalive pings notice a peer that stopped
answering long before that. gRPC failures become ``AgentError`` with a message naming the node, its address and what to do;
an agent's refusal of a deposed controller's epoch is ``AgentFenced``.

``replica_logs`` (``fleetd logs``) streams a replica's log: a tail has a deadline; following has none (the
keepalive pings notice a dead agent) and lasts until the iterator is closed, which cancels the call.

Mutating calls carry the controller's ``CallerFence``. A ``load``/``restart`` also carries the values of the
instance's ``${env:NAME}`` references, read from this process's environment: they travel only over mutual
TLS, or in plaintext when both ends chose ``--insecure`` (a plaintext channel reaches only a plaintext agent).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import grpc

from fleetd.core.canonical import digest
from fleetd.core.desired import BackendSpec, InstanceSpec, startup_timeout_ms
from fleetd.transport import agent_service_pb2 as pb
from fleetd.transport import agent_service_pb2_grpc as pb_grpc
from fleetd.transport.agent_api import (
    AgentError,
    AgentFenced,
    CallerFence,
    InstallResult,
    LaunchRequest,
    LogStream,
    NodeReport,
    ProgressSink,
    ReplicaNotFound,
    ReplicaStatus,
)
from fleetd.transport.codec import encode
from fleetd.transport.messages import progress_value, report_value, result_value, status_value
from fleetd.transport.security import Security

T = TypeVar("T")

CALL_TIMEOUT_S = 5.0
"""Deadline of a read (health, list) and the slack added to every longer call."""
ESTIMATE_TIMEOUT_S = 30.0
"""Reading a GGUF header on a slow (network) disk."""
INSTALL_TIMEOUT_S = 3600.0
"""A backend built from source (llama.cpp: about 12 minutes on two cores) on a slow node."""
AGENT_STARTUP_SLACK_S = 5.0
"""What the agent waits beyond the startup timeout (``fleetd.agent.local.STARTUP_SLACK_S``)."""
LOG_TAIL_TIMEOUT_S = 30.0
"""Reading a replica's last lines (a log is at most a few tens of MiB) over a slow link."""
ESTIMATE_TTL_S = 60.0
"""How long an estimate is reused: each cycle asks for every ``vram: auto`` instance."""
KEEPALIVE_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
NoFence = Callable[[], CallerFence | None]


def channel_options(node: str, security: Security) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    if not security.insecure:
        options.append(("grpc.ssl_target_name_override", node))  # the certificate must name the node
    return options


def open_channel(node: str, address: str, security: Security) -> grpc.Channel:
    options = channel_options(node, security)
    if security.tls is None:
        return grpc.insecure_channel(address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=security.tls.ca, private_key=security.tls.key, certificate_chain=security.tls.cert
    )
    return grpc.secure_channel(address, credentials, options=options)


class GrpcAgentClient:
    """Commands to the ``fleetd agent`` of ``node`` at ``address``. Thread-safe (one channel, many calls)."""

    def __init__(
        self,
        node: str,
        address: str,
        security: Security,
        *,
        fence: NoFence = lambda: None,
        call_timeout_s: float = CALL_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``fence`` gives the controller's lease at the time of each mutating call (``None``: the call is
        refused by the agent, which only obeys a leader). ``environ`` is where ``${env:NAME}`` values are
        read (this process's environment by default)."""
        self._node = node
        self._address = address
        self._security = security
        self._fence = fence
        self._call_timeout_s = call_timeout_s
        self._environ = environ if environ is not None else os.environ
        self._channel = open_channel(node, address, security)
        self._stub = pb_grpc.AgentServiceStub(self._channel)
        self._estimates: dict[str, tuple[float, int]] = {}
        self._estimates_lock = threading.Lock()

    @property
    def node(self) -> str:
        return self._node

    @property
    def address(self) -> str:
        return self._address

    def close(self) -> None:
        self._channel.close()

    # AgentClient ----------------------------------------------------------------------------------------------

    def install_backend(self, backend: BackendSpec, *, progress: ProgressSink | None = None) -> InstallResult:
        request = pb.InstallBackendRequest(
            fence=self._fence_message(), node=self._node, backend_json=encode(backend)
        )

        def run(timeout: float) -> InstallResult:
            for event in self._stub.InstallBackend(request, timeout=timeout):
                if event.HasField("result"):
                    return result_value(event.result)
                if progress is not None:
                    progress(progress_value(event.progress))
            raise AgentError(f"node {self._node}: the install of {backend.name} ended without a result")

        return self._call(f"install {backend.name}", INSTALL_TIMEOUT_S, run)

    def load(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        message = self._launch_message(request, timeout_s)
        deadline = self._launch_deadline(request, timeout_s)
        what = f"load {request.spec.name}/{request.replica}"
        return self._call(what, deadline, lambda t: status_value(self._stub.Load(message, timeout=t)))

    def restart(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        message = self._launch_message(request, timeout_s)
        deadline = self._launch_deadline(request, timeout_s)
        what = f"restart {request.spec.name}/{request.replica}"
        return self._call(what, deadline, lambda t: status_value(self._stub.Restart(message, timeout=t)))

    def unload(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool:
        message = pb.UnloadRequest(
            fence=self._fence_message(), node=self._node, instance=instance, replica=replica, grace_s=grace_s
        )
        deadline = grace_s + 2 * self._call_timeout_s
        return self._call(
            f"unload {instance}/{replica}", deadline, lambda t: self._stub.Unload(message, timeout=t).existed
        )

    def list_replicas(self) -> tuple[ReplicaStatus, ...]:
        message = pb.ListReplicasRequest(node=self._node)

        def run(timeout: float) -> tuple[ReplicaStatus, ...]:
            return tuple(status_value(s) for s in self._stub.ListReplicas(message, timeout=timeout).replicas)

        return self._call("list replicas", self._call_timeout_s, run)

    def health(self) -> NodeReport:
        message = pb.HealthRequest(node=self._node, fence=self._fence_message())
        return self._call(
            "health", self._call_timeout_s, lambda t: report_value(self._stub.Health(message, timeout=t))
        )

    def estimate(self, spec: InstanceSpec) -> int:
        key = digest((spec.model, spec.options, spec.backend))
        with self._estimates_lock:
            cached = self._estimates.get(key)
        if cached is not None and time.monotonic() - cached[0] < ESTIMATE_TTL_S:
            return cached[1]
        message = pb.EstimateRequest(node=self._node, instance_json=encode(spec))
        size = self._call(
            f"estimate {spec.name}", ESTIMATE_TIMEOUT_S, lambda t: self._stub.Estimate(message, timeout=t).bytes
        )
        with self._estimates_lock:
            self._estimates[key] = (time.monotonic(), size)
        return size

    def replica_logs(self, instance: str, replica: int, *, tail_lines: int, follow: bool) -> LogStream:
        """See ``ReplicaLogReader``: the call starts at the first ``next()``, and gRPC failures (the agent
        unreachable, no such replica there) arrive then as ``AgentError``."""
        message = pb.ReplicaLogsRequest(
            node=self._node, instance=instance, replica=replica, tail_lines=tail_lines, follow=follow
        )
        return self._log_chunks(message, f"logs of {instance}/{replica}", follow=follow)

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        message = pb.CheckModelsRequest(node=self._node, paths=sorted(set(paths)))

        def run(timeout: float) -> frozenset[str]:
            return frozenset(self._stub.CheckModels(message, timeout=timeout).missing)

        return self._call("check model files", self._call_timeout_s, run)

    # helpers --------------------------------------------------------------------------------------------------

    def _log_chunks(self, message: pb.ReplicaLogsRequest, what: str, *, follow: bool) -> LogStream:
        timeout = None if follow else LOG_TAIL_TIMEOUT_S
        call = self._stub.ReplicaLogs(message, timeout=timeout)
        try:
            for chunk in call:
                yield chunk.data
        except grpc.RpcError as exc:
            raise self._error(what, timeout or 0.0, exc) from None
        finally:
            call.cancel()  # closed early (Ctrl-C, a consumer that has seen enough): the agent stops reading

    def _fence_message(self) -> pb.Fence | None:
        fence = self._fence()
        return None if fence is None else pb.Fence(epoch=fence.epoch, holder=fence.holder)

    def _launch_message(self, request: LaunchRequest, timeout_s: float | None) -> pb.LaunchRequest:
        return pb.LaunchRequest(
            fence=self._fence_message(),
            node=self._node,
            instance_json=encode(request.spec),
            backend_json=encode(request.backend),
            replica=request.replica,
            config_hash=request.config_hash,
            vram_bytes=request.vram_bytes,
            timeout_s=timeout_s or 0.0,
            secrets=self._secrets(request.spec),
        )

    def _secrets(self, spec: InstanceSpec) -> dict[str, str]:
        """The values this process has for the instance's ``${env:NAME}`` references (the agent falls back to
        its own environment for the others)."""
        names = {name for _, value in spec.environment for name in value.references}
        return {name: self._environ[name] for name in sorted(names) if name in self._environ}

    def _launch_deadline(self, request: LaunchRequest, timeout_s: float | None) -> float:
        if timeout_s is not None:
            return timeout_s + AGENT_STARTUP_SLACK_S + self._call_timeout_s
        startup_ms = startup_timeout_ms(request.spec.health.startup_timeout_ms, request.vram_bytes)
        return startup_ms / 1000 + AGENT_STARTUP_SLACK_S + self._call_timeout_s

    def _call(self, what: str, timeout_s: float, run: Callable[[float], T]) -> T:
        try:
            return run(timeout_s)
        except grpc.RpcError as exc:
            raise self._error(what, timeout_s, exc) from None

    def _error(self, what: str, timeout_s: float, exc: grpc.RpcError) -> AgentError:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        where = f"node {self._node} ({self._security.mark}{self._address})"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return AgentError(
                f"{where}: {what} got no answer within {timeout_s:.0f} s; the agent may be hung or overloaded"
            )
        if code is grpc.StatusCode.UNAVAILABLE:
            return AgentError(
                f"{where}: cannot reach the agent for {what} ({details}); check that `fleetd agent` runs there, "
                "listens on that address and trusts this controller's certificate"
            )
        if code is grpc.StatusCode.PERMISSION_DENIED:
            return AgentFenced(details)
        if code is grpc.StatusCode.NOT_FOUND:
            return ReplicaNotFound(details)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return AgentError(f"{where}: the agent does not serve {what}: it runs an older fleetd; upgrade it")
        if code in (
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ):
            return AgentError(details)
        return AgentError(f"{where}: {what} failed: {code.name}: {details}")
