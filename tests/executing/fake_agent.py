"""A fake ``AgentClient`` for the executor's tests: honest to the protocol, with knobs for failures and timing.

It keeps its replicas in a dict (a load of a replica it already runs with the same config hash returns it,
an unload of one it does not know returns ``False``), can be told to fail a call (``fail``), to report a
started replica in another state (``start_as``), and to hold calls until the test releases them (``hold``).
A replica's output is what the test writes for it (``write_output``); ``replica_logs`` reads it as the real
agents read a log file.
Every call is written to a ``CallLog`` shared by the fakes of one test, with start and end ticks from one
counter, so tests can check order across nodes; the log also counts calls in progress per node.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from fleetd.agent.log_reading import split_lines
from fleetd.core.desired import BackendSpec, InstallKind, InstanceSpec
from fleetd.core.observed import ReplicaState
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

HOLD_LIMIT_S = 30.0
"""A held call that nobody releases fails after this long, so a broken test fails instead of hanging."""
QUIET_S = 0.05
"""How long a follower of a replica's output waits for more before it yields an empty chunk."""


@dataclass(frozen=True, slots=True)
class Call:
    node: str
    method: str
    target: str
    started: int
    ended: int


class CallLog:
    """Calls of all the fakes of a test, with ticks from one counter, and calls in progress per node."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1)
        self._lock = threading.Condition()
        self.calls: list[Call] = []
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()

    def begin(self, node: str) -> int:
        with self._lock:
            self.active[node] += 1
            self.max_active[node] = max(self.max_active[node], self.active[node])
            self._lock.notify_all()
            return next(self._ticks)

    def end(self, node: str, method: str, target: str, started: int) -> None:
        with self._lock:
            self.active[node] -= 1
            self.calls.append(Call(node, method, target, started, next(self._ticks)))
            self._lock.notify_all()

    def wait_for_active(self, counts: dict[str, int], timeout_s: float = 10.0) -> bool:
        """Block until exactly ``counts`` calls are in progress on those nodes (False when that never happens)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: all(self.active[n] == c for n, c in counts.items()), timeout=timeout_s
            )

    def of(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if method is None or c.method == method]

    def find(self, method: str, target: str) -> Call:
        [call] = [c for c in self.of(method) if c.target == target]
        return call


@dataclass
class FakeAgent:
    name: str
    log: CallLog
    replicas: dict[tuple[str, int], ReplicaStatus] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    """(method, target) -> AgentError message; target ``*`` matches every call of the method."""
    holds: dict[str, threading.Event] = field(default_factory=dict)
    start_states: dict[str, ReplicaState] = field(default_factory=dict)
    """Target -> the state a started replica reports (default running)."""
    starts: int = 0
    """Processes started (a load that found its replica already running starts none)."""
    processes: set[int] = field(default_factory=set)
    """The pids of the "processes" it runs: a stopped or replaced replica's pid leaves the set."""
    models: dict[str, int] = field(default_factory=dict)
    """Model path -> the bytes ``estimate`` answers; a model not listed is not on this node."""
    total_vram: int = 80 * 1024**3
    outputs: dict[tuple[str, int], bytes] = field(default_factory=dict)
    """What each replica "wrote" (``write_output``); kept after an unload, as a log file is."""
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(4000))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _written: threading.Condition = field(default_factory=threading.Condition)

    # knobs
    def fail(self, method: str, target: str = "*", message: str = "it broke") -> None:
        self.failures[(method, target)] = message

    def hold(self, method: str) -> threading.Event:
        """Calls of ``method`` wait until the returned event is set."""
        event = self.holds[method] = threading.Event()
        return event

    def start_as(self, target: str, state: ReplicaState) -> None:
        self.start_states[target] = state

    def write_output(self, instance: str, replica: int, data: bytes) -> None:
        """The replica prints ``data``."""
        with self._written:
            self.outputs[(instance, replica)] = self.outputs.get((instance, replica), b"") + data
            self._written.notify_all()

    # the protocol
    @property
    def node(self) -> str:
        return self.name

    def install_backend(self, backend: BackendSpec, *, progress: ProgressSink | None = None) -> InstallResult:
        started = self._begin("install_backend", backend.name)
        try:
            recipe = f"{backend.install.kind.value}:{backend.install.spec}"
            changed = self.installed.get(backend.name) != recipe
            self.installed[backend.name] = recipe
            binary = backend.install.kind is InstallKind.BINARY
            executable = backend.install.spec if binary else f"/opt/{backend.name}/bin/server"
            return InstallResult(backend.name, executable, "1.0", changed)
        finally:
            self.log.end(self.name, "install_backend", backend.name, started)

    def load(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        target = f"{request.spec.name}/{request.replica}"
        started = self._begin("load", target, backend=request.backend.name)
        try:
            key = (request.spec.name, request.replica)
            with self._lock:
                current = self.replicas.get(key)
                if current is not None and current.config_hash == request.config_hash:
                    return current
                return self._start(request, target)
        finally:
            self.log.end(self.name, "load", target, started)

    def restart(self, request: LaunchRequest, *, timeout_s: float | None = None) -> ReplicaStatus:
        target = f"{request.spec.name}/{request.replica}"
        started = self._begin("restart", target, backend=request.backend.name)
        try:
            with self._lock:
                previous = self.replicas.pop((request.spec.name, request.replica), None)
                if previous is not None and previous.pid is not None:
                    self.processes.discard(previous.pid)
                status = self._start(request, target)
                if previous is not None:
                    status = dataclasses.replace(status, restarts=previous.restarts + 1)
                    self.replicas[(request.spec.name, request.replica)] = status
                return status
        finally:
            self.log.end(self.name, "restart", target, started)

    def unload(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool:
        target = f"{instance}/{replica}"
        started = self._begin("unload", target)
        try:
            with self._lock:
                stopped = self.replicas.pop((instance, replica), None)
                if stopped is not None and stopped.pid is not None:
                    self.processes.discard(stopped.pid)
                return stopped is not None
        finally:
            self.log.end(self.name, "unload", target, started)

    def list_replicas(self) -> tuple[ReplicaStatus, ...]:
        with self._lock:
            return tuple(self.replicas[k] for k in sorted(self.replicas))

    def health(self) -> NodeReport:
        with self._lock:
            used = sum(r.vram_bytes for r in self.replicas.values())
        free = max(0, self.total_vram - used)
        return NodeReport(
            self.name, "nvidia", (), self.total_vram, free, 0, 0, "linux-x86_64", tuple(sorted(self.installed))
        )

    def estimate(self, spec: InstanceSpec) -> int:
        found = self.models.get(spec.model)
        if found is None:
            raise AgentError(
                f"node {self.name}: cannot estimate the VRAM of {spec.name}: {spec.model} is not here"
            )
        return found

    def replica_logs(self, instance: str, replica: int, *, tail_lines: int, follow: bool) -> LogStream:
        key = (instance, replica)
        with self._lock, self._written:
            if key not in self.replicas and key not in self.outputs:
                raise ReplicaNotFound(f"node {self.name} has no replica {instance}/{replica}")
        return self._output(key, tail_lines, follow)

    def missing_models(self, paths: Iterable[str]) -> frozenset[str]:
        """The absolute paths not in ``models`` (the model files this node has); logged (target: the paths, comma
        separated) and failed (``fail("missing_models")``) like the other calls."""
        asked = tuple(sorted(paths))
        target = ",".join(asked)
        started = self._begin("missing_models", target)
        try:
            return frozenset(p for p in asked if p.startswith("/") and p not in self.models)
        finally:
            self.log.end(self.name, "missing_models", target, started)

    # internals
    def _output(self, key: tuple[str, int], tail_lines: int, follow: bool) -> LogStream:
        with self._written:
            data = self.outputs.get(key, b"")
        if tail_lines > 0 and data:
            yield b"".join(split_lines(data)[-tail_lines:])
        offset = len(data)
        while follow:
            with self._written:
                if len(self.outputs.get(key, b"")) <= offset:
                    self._written.wait(QUIET_S)  # a write notifies; else an empty chunk after QUIET_S
                data = self.outputs.get(key, b"")
            yield data[offset:]
            offset = len(data)

    def _begin(self, method: str, target: str, *, backend: str | None = None) -> int:
        started = self.log.begin(self.name)
        try:
            if backend is not None and backend not in self.installed:
                raise AgentError(
                    f"backend {backend} is not installed on node {self.name}: apply a plan with its "
                    "install_backend action first"
                )
            event = self.holds.get(method)
            if event is not None and not event.wait(HOLD_LIMIT_S):
                raise AgentError(f"{method} {target} was held and never released")
            message = self.failures.get((method, target)) or self.failures.get((method, "*"))
            if message is not None:
                raise AgentError(message)
        except AgentError:
            self.log.end(self.name, method, target, started)
            raise
        return started

    def _start(self, request: LaunchRequest, target: str) -> ReplicaStatus:
        self.starts += 1
        pid = next(self._pids)
        state = self.start_states.get(target, ReplicaState.RUNNING)
        status = ReplicaStatus(
            instance=request.spec.name,
            replica=request.replica,
            state=state,
            config_hash=request.config_hash,
            address=f"10.0.0.1:{pid}",
            pid=pid,
            process_start=f"start-{pid}",
            last_error=None if state is ReplicaState.RUNNING else f"replica {target} is {state.value}",
            vram_bytes=request.vram_bytes,
        )
        self.replicas[(request.spec.name, request.replica)] = status
        self.processes.add(pid)
        return status
