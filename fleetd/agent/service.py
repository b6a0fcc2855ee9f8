"""``AgentService``: the node's ``LocalAgent`` behind gRPC, for ``fleetd agent`` (architecture.md §3).

Each call names the node it is meant for, and is refused when this agent is another node (an address in the
manifest pointing at the wrong machine). Mutating calls pass the ``EpochGuard`` first. What the local agent
raises becomes a gRPC status with a message for people: ``AgentError`` -> FAILED_PRECONDITION, a bad request
-> INVALID_ARGUMENT, a fenced call -> PERMISSION_DENIED; anything else is logged with its traceback here and
answered INTERNAL with one line. Secret values in a launch request are handed to the supervisor and never
logged.

``ReplicaLogs`` streams a replica's log for ``fleetd logs`` (read-only, so unfenced; the node check applies): an
unknown replica is NOT_FOUND. A follower holds one of the server's threads until its caller cancels, so at
most ``MAX_FOLLOWERS`` run at once (RESOURCE_EXHAUSTED beyond), leaving the others to the controller's calls;
it notices a cancelled call at its next poll of the file.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

import grpc

from fleetd.agent.fencing import EpochGuard, Fenced
from fleetd.core.desired import BackendSpec, InstanceSpec
from fleetd.transport import agent_service_pb2 as pb
from fleetd.transport import agent_service_pb2_grpc as pb_grpc
from fleetd.transport.agent_api import (
    AgentError,
    InstallProgress,
    InstallResult,
    LaunchRequest,
    LogStream,
    NodeReport,
    ProgressSink,
    ReplicaNotFound,
    ReplicaStatus,
)
from fleetd.transport.codec import CodecError, decode_backend, decode_instance
from fleetd.transport.messages import progress_event, report_message, result_event, status_message

T = TypeVar("T")
log = logging.getLogger("fleetd.agent")

MAX_FOLLOWERS = 4
"""Logs followed at once through one agent (each holds a server thread while it lasts)."""
QUIET_CHUNK_S = 1.0
"""While a followed log is quiet, an empty chunk this often: the caller sees the stream alive and can stop."""


class ServedAgent(Protocol):
    """What the service needs of the local agent (``LocalAgent``; the contract suite's agents)."""

    @property
    def node(self) -> str: ...

    def install_backend(self, backend: BackendSpec, *, progress: ProgressSink | None = None) -> InstallResult: ...

    def load(
        self, request: LaunchRequest, *, timeout_s: float | None = None, secrets: Mapping[str, str] | None = None
    ) -> ReplicaStatus: ...

    def restart(
        self, request: LaunchRequest, *, timeout_s: float | None = None, secrets: Mapping[str, str] | None = None
    ) -> ReplicaStatus: ...

    def unload(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool: ...

    def list_replicas(self) -> tuple[ReplicaStatus, ...]: ...

    def health(self) -> NodeReport: ...

    def estimate(self, spec: InstanceSpec) -> int: ...

    def replica_logs(self, instance: str, replica: int, *, tail_lines: int, follow: bool) -> LogStream: ...

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]: ...


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, agent: ServedAgent, guard: EpochGuard, *, mark: str = "") -> None:
        """``mark`` prefixes every log line (``[insecure: no TLS]`` when served without TLS)."""
        self._agent = agent
        self._guard = guard
        self._mark = mark
        self._followers = threading.BoundedSemaphore(MAX_FOLLOWERS)

    def InstallBackend(
        self, request: pb.InstallBackendRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.InstallEvent]:
        backend = self._serve(
            context, request.node, "install a backend", lambda: decode_backend(request.backend_json)
        )
        self._admit(context, request.fence, f"install {backend.name}")
        events: queue.Queue[pb.InstallEvent | BaseException | None] = queue.Queue()

        def progress(event: InstallProgress) -> None:
            events.put(progress_event(event))

        def work() -> None:
            try:
                events.put(result_event(self._agent.install_backend(backend, progress=progress)))
            except BaseException as exc:  # handed to the streaming thread, which answers it
                events.put(exc)
            events.put(None)

        threading.Thread(target=work, name=f"fleetd-install-{backend.name}", daemon=True).start()
        while (event := events.get()) is not None:
            if isinstance(event, BaseException):
                self._serve(context, request.node, f"install {backend.name}", lambda: _raise(event))
            else:
                yield event

    def Load(self, request: pb.LaunchRequest, context: grpc.ServicerContext) -> pb.ReplicaStatus:
        return self._launch(request, context, restart=False)

    def Restart(self, request: pb.LaunchRequest, context: grpc.ServicerContext) -> pb.ReplicaStatus:
        return self._launch(request, context, restart=True)

    def Unload(self, request: pb.UnloadRequest, context: grpc.ServicerContext) -> pb.UnloadReply:
        what = f"unload {request.instance}/{request.replica}"
        self._serve(context, request.node, what, lambda: None)
        self._admit(context, request.fence, what)
        existed = self._serve(
            context,
            request.node,
            what,
            lambda: self._agent.unload(request.instance, request.replica, grace_s=request.grace_s),
        )
        log.info("%s%s: %s", self._mark, what, "stopped" if existed else "was not running")
        return pb.UnloadReply(existed=existed)

    def ListReplicas(self, request: pb.ListReplicasRequest, context: grpc.ServicerContext) -> pb.ReplicaList:
        replicas = self._serve(context, request.node, "list replicas", self._agent.list_replicas)
        return pb.ReplicaList(replicas=[status_message(s) for s in replicas])

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.NodeReport:
        if request.fence.epoch and self._guard.observe(request.fence.epoch):
            log.info(
                "%sa new controller leads (%s, lease epoch %d)",
                self._mark,
                request.fence.holder,
                request.fence.epoch,
            )
        return report_message(self._serve(context, request.node, "report health", self._agent.health))

    def Estimate(self, request: pb.EstimateRequest, context: grpc.ServicerContext) -> pb.EstimateReply:
        def run() -> int:
            return self._agent.estimate(decode_instance(request.instance_json))

        return pb.EstimateReply(bytes=self._serve(context, request.node, "estimate", run))

    def ReplicaLogs(self, request: pb.ReplicaLogsRequest, context: grpc.ServicerContext) -> Iterator[pb.LogChunk]:
        what = f"read the log of {request.instance}/{request.replica}"

        def opened() -> LogStream:
            return self._agent.replica_logs(
                request.instance, request.replica, tail_lines=request.tail_lines, follow=request.follow
            )

        stream = self._serve(context, request.node, what, opened)
        if request.follow:
            if not self._followers.acquire(blocking=False):
                stream.close()
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"node {self._agent.node} already streams {MAX_FOLLOWERS} followed logs, the most it "
                    "serves at once: stop one of them, or read without --follow",
                )
            if not context.add_callback(self._followers.release):  # runs when the call ends, however it ends
                self._followers.release()
        try:
            yield from _forward(stream, context)
        except OSError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"node {self._agent.node}: cannot {what}: {exc}")
        finally:
            stream.close()

    def CheckModels(self, request: pb.CheckModelsRequest, context: grpc.ServicerContext) -> pb.CheckModelsReply:
        def run() -> frozenset[str]:
            return self._agent.missing_models(request.paths)

        missing = self._serve(context, request.node, "check model files", run)
        return pb.CheckModelsReply(missing=sorted(missing))

    # helpers --------------------------------------------------------------------------------------------------

    def _launch(
        self, request: pb.LaunchRequest, context: grpc.ServicerContext, *, restart: bool
    ) -> pb.ReplicaStatus:
        verb = "restart" if restart else "load"

        def decoded() -> LaunchRequest:
            spec = decode_instance(request.instance_json)
            backend = decode_backend(request.backend_json)
            return LaunchRequest(spec, backend, request.replica, request.config_hash, request.vram_bytes)

        launch = self._serve(context, request.node, verb, decoded)
        what = f"{verb} {launch.spec.name}/{launch.replica}"
        self._admit(context, request.fence, what)
        timeout_s = request.timeout_s or None
        secrets = dict(request.secrets)
        call = self._agent.restart if restart else self._agent.load
        status = self._serve(
            context, request.node, what, lambda: call(launch, timeout_s=timeout_s, secrets=secrets)
        )
        log.info("%s%s: %s", self._mark, what, status.state.value)
        return status_message(status)

    def _admit(self, context: grpc.ServicerContext, fence: pb.Fence, what: str) -> None:
        holder = fence.holder or "a controller"
        try:
            self._guard.admit(fence.epoch or None, fence.holder, what)
        except Fenced as exc:
            log.warning("%s%s", self._mark, exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info("%s%s (from %s, lease epoch %d)", self._mark, what, holder, fence.epoch)

    def _serve(self, context: grpc.ServicerContext, node: str, what: str, run: Callable[[], T]) -> T:
        """``run()``, with the node checked first and failures answered as gRPC statuses."""
        if node != self._agent.node:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this agent is node {self._agent.node}, not {node or '(unnamed)'}: the manifest's address for "
                f"node {node} points at another machine",
            )
        try:
            return run()
        except ReplicaNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except AgentError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except CodecError as exc:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"node {self._agent.node}: bad request to {what}: {exc}"
            )
        except Exception as exc:
            log.exception("%s%s failed", self._mark, what)
            context.abort(
                grpc.StatusCode.INTERNAL, f"node {self._agent.node}: {what} failed: {type(exc).__name__}: {exc}"
            )


def _raise(exc: BaseException) -> None:
    raise exc


def _forward(stream: LogStream, context: grpc.ServicerContext) -> Iterator[pb.LogChunk]:
    """The stream's chunks as messages, an empty one only every ``QUIET_CHUNK_S``; ends when the call does
    (the caller cancelled, or went away): checked at every chunk, so at least at every poll of the file."""
    sent = time.monotonic()
    for data in stream:
        if not context.is_active():
            return
        now = time.monotonic()
        if data or now - sent >= QUIET_CHUNK_S:
            sent = now
            yield pb.LogChunk(data=data)
