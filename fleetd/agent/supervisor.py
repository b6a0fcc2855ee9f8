"""The supervisor: starts, watches, restarts and stops the replica processes of one node.

Each replica is a process in its own session (so a one-shot ``fleetd apply`` leaves it running and a crashed
agent does not take it down), writing to its own log file. One monitor thread does everything that happens
over time: it notices a process that exited and restarts it under the instance's restart policy (doubling
delays up to a cap, reset after a stable period; once ``max_restarts`` is used up the replica is ``failed``
with its last log lines, not restarted forever), runs the startup probe until the backend answers, and then
the periodic probe, where a timeout with the port open is "busy", not dead, and only ``failure_threshold``
consecutive failures make a replica ``unhealthy`` (the planner then replaces it).

Each start first writes ``<state>/replicas/<instance>.<replica>.json`` with the marker
``FLEETD_REPLICA=<instance>/<replica>/<nonce>`` it puts in the process's environment, then starts the process,
then writes its pid, start time and process group (a record that cannot be written starts nothing, or stops what
started, and fails the replica). So an agent started again after SIGKILL adopts the processes that still run
with the recorded pid and start time (and, where the environment can be read, that marker; or, with no pid
recorded yet, the group leader carrying the marker), and restarts the ones that died: no orphan, no duplicate.
The command line is not compared: a wrapper script shows as ``/bin/sh wrapper.sh``, then as whatever it
``exec``s (a state file from before markers still compares the arguments after the executable). A replica is its
process group: once the leader is gone, what is left of the group (with the marker) is killed. A start that
fails before any process runs counts as a crash.

Secrets are never written: the environment is kept as its templates, resolved at each start from the values the
controller sent with the load (``start_replica``'s ``secrets``, held in memory only, dropped when the replica
stops) and then from the agent's environment. An agent started again has no sent values, so its restarts of
adopted replicas read the agent's environment alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import BinaryIO

import psutil

from fleetd.agent.log_lines import first_error_line
from fleetd.agent.log_reading import log_file, replicas_dir, rotated_path
from fleetd.agent.port_moves import movable, with_port
from fleetd.agent.ports import PortAllocator, PortsExhausted, is_free
from fleetd.agent.probing import ProbeOutcome, ProbeResult, probe
from fleetd.core.desired import ENV_REFERENCE, BackendType, HealthPolicy, RestartPolicy
from fleetd.core.observed import ReplicaState
from fleetd.runtimes.probes import ProbeSpec, probe_spec
from fleetd.transport.agent_api import ReplicaStatus

log = logging.getLogger("fleetd.agent.supervisor")
MARKER_VARIABLE = "FLEETD_REPLICA"
"""Set in each replica's environment to ``<instance>/<replica>/<nonce>`` (a new nonce per start, kept in the state
file): the identity by which a later agent recognises the process, whatever its command line became."""
LOG_TAIL_LINES = 20
MIN_SECRET_CHARS = 4
"""Shorter values are not scrubbed from log tails: replacing every "1" or "on" would garble the text, and a
secret that short protects nothing."""
FAST_START_PROBE_S = 0.005
FAST_START_WINDOW_S = 2.0
"""For its first 2 s a starting replica is probed every 5 ms (a refused connection costs microseconds): a small
model is ready in tens of milliseconds, and a 20 ms tick would add up to a tick to every load. Then every tick."""
Prober = Callable[[str, ProbeSpec, BackendType, float], ProbeResult]


def default_prober(address: str, spec: ProbeSpec, backend_type: BackendType, timeout_s: float) -> ProbeResult:
    return probe(address, spec, backend_type, timeout_s=timeout_s)


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to (re)start one replica, without secret values: what the state file holds."""

    instance: str
    replica: int
    backend_type: BackendType
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    """Environment to add, as templates: ``${env:NAME}`` references are resolved at each start (from the
    values sent with the load, else the agent's environment), so the state file never holds a secret value."""
    host: str
    port: int
    config_hash: str
    vram_bytes: int = 0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    container: str | None = None
    port_slots: tuple[int, ...] | None = None
    """Which argv words hold the port (``port_moves``), so a restart can move the replica to a free port when its
    own was taken; ``None``: not movable (unknown, e.g. a state file from before moves existed)."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.instance, self.replica)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Secrets:
    """Values for ``${env:NAME}`` references, sent by the controller with a load. Its repr names the
    variables, never their values, so a debug print or a traceback's locals cannot leak one."""

    values: Mapping[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"_Secrets(names={sorted(self.values)!r})"


@dataclass(slots=True)
class _Replica:
    launch: Launch
    log_path: Path
    state: ReplicaState = ReplicaState.STARTING
    popen: subprocess.Popen[bytes] | None = None
    process: psutil.Process | None = None
    pid: int | None = None
    process_start: float | None = None
    marker: str | None = None
    """``FLEETD_REPLICA``'s value in the process's environment; ``None`` for a process started before markers."""
    pgid: int | None = None
    """The process group (the replica leads its own session, so it is the pid it was started with)."""
    started_at: float = 0.0
    next_probe_at: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    """Restarts since the replica was loaded (shown to people)."""
    streak: int = 0
    """Restarts since the last stable period (what ``max_restarts`` and the doubling delay count)."""
    failures: int = 0
    last_error: str | None = None
    in_flight: int = 0
    last_used_ms: int | None = None
    healthy_once: bool = False


class Supervisor:
    """Replica processes of one node, watched by one monitor thread. Thread-safe."""

    def __init__(
        self,
        state_dir: Path,
        *,
        ports: PortAllocator | None = None,
        prober: Prober = default_prober,
        stable_after_s: float = 60.0,
        tick_s: float = 0.02,
        log_max_bytes: int = 10 * 1024 * 1024,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """``on_change`` runs on the monitor thread after a tick in which a replica's state changed (a crash, a
        restart, a start that became healthy, a replica given up as failed): the daemon's trigger for a cycle,
        so that the registry and the plan follow a replica event at once rather than at the next interval."""
        self._dir = replicas_dir(state_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._ports = ports or PortAllocator()
        self._prober = prober
        self._stable_after_s = stable_after_s
        self._tick_s = tick_s
        self._log_max_bytes = log_max_bytes
        self._replicas: dict[tuple[str, int], _Replica] = {}
        self._secrets: dict[tuple[str, int], _Secrets] = {}
        """Per replica, the values sent with its load: in memory only, never in ``_Replica`` (nor its state file)."""
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change = on_change

    # lifecycle of the supervisor itself ---------------------------------------------------------------------

    def start(self) -> None:
        """Adopt what an earlier agent left running, then start watching."""
        self._adopt_all()
        self._thread = threading.Thread(target=self._run, name="fleetd-supervisor", daemon=True)
        self._thread.start()

    def close(self, *, stop_replicas: bool = False, grace_s: float = 10.0) -> None:
        """Stop watching. Replicas keep running (the next agent adopts them) unless ``stop_replicas``."""
        if stop_replicas:
            for key in list(self._replicas):
                self.stop(*key, grace_s=grace_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def alive(self) -> bool:
        """Whether the monitor thread still runs (what a watchdog reports)."""
        return self._thread is not None and self._thread.is_alive()

    # commands -----------------------------------------------------------------------------------------------

    def start_replica(self, launch: Launch, *, secrets: Mapping[str, str] | None = None) -> ReplicaStatus:
        """Start a replica (the caller checked no other process holds its key). ``secrets``: values for the
        launch's ``${env:NAME}`` references, taken before the agent's environment, on this start and on the
        supervisor's restarts of the replica, until it is stopped; kept in memory only."""
        with self._lock:
            replica = _Replica(launch, self.log_path(launch.instance, launch.replica))
            self._replicas[launch.key] = replica
            if secrets:
                self._secrets[launch.key] = _Secrets(dict(secrets))
            else:
                self._secrets.pop(launch.key, None)
            self._spawn(replica)
            self._wake.set()
            return self._status(replica)

    def remember_secrets(self, instance: str, replica: int, secrets: Mapping[str, str]) -> None:
        """Keep ``secrets`` for a replica that already runs (an adopted one lost them with the previous agent),
        for the supervisor's next restart of it."""
        with self._lock:
            if (instance, replica) in self._replicas and secrets:
                self._secrets[(instance, replica)] = _Secrets(dict(secrets))

    def wait(self, instance: str, replica: int, *, timeout_s: float) -> ReplicaStatus | None:
        """Wait until the replica is running, unhealthy or failed (or ``timeout_s``); ``None`` if unknown."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = self._replicas.get((instance, replica))
                if found is None:
                    return None
                settled = found.state in (ReplicaState.RUNNING, ReplicaState.FAILED, ReplicaState.UNHEALTHY)
                left = deadline - time.monotonic()
                if settled or left <= 0:
                    return self._status(found)
                self._changed.wait(timeout=min(left, 0.5))

    def stop(self, instance: str, replica: int, *, grace_s: float = 10.0) -> bool:
        """SIGTERM the replica's process group, SIGKILL it after ``grace_s``; forget the replica."""
        with self._lock:
            found = self._replicas.get((instance, replica))
            if found is None:
                return False
            found.state = ReplicaState.STOPPING
            found.restart_at = None
        self._terminate(found, grace_s)
        with self._changed:
            self._replicas.pop((instance, replica), None)
            self._secrets.pop((instance, replica), None)
            self._ports.release(found.launch.port)
            self._forget_state(found.launch)
            self._changed.notify_all()
        return True

    def get(self, instance: str, replica: int) -> ReplicaStatus | None:
        with self._lock:
            found = self._replicas.get((instance, replica))
            return self._status(found) if found is not None else None

    def launch_of(self, instance: str, replica: int) -> Launch | None:
        with self._lock:
            found = self._replicas.get((instance, replica))
            return found.launch if found is not None else None

    def list(self) -> tuple[ReplicaStatus, ...]:
        with self._lock:
            return tuple(self._status(self._replicas[k]) for k in sorted(self._replicas))

    def log_path(self, instance: str, replica: int) -> Path:
        """Where the replica's output goes (rotated to ``.log.1`` past ``log_max_bytes``), whether or not the
        replica runs now: a stopped replica's log stays."""
        return log_file(self._dir, instance, replica)

    # the monitor --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        seen = self._states()
        while True:
            # A start wakes the monitor at once, so a replica's probes run at fixed intervals from its spawn:
            # how soon a ready replica is seen does not depend on where the tick happened to be.
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                replicas = list(self._replicas.values())
            for replica in replicas:
                try:
                    self._check(replica)
                except Exception as exc:  # one replica's trouble must not stop the others' supervision
                    replica.last_error = f"supervisor: {exc}"
            now = self._states()
            if now != seen and self._on_change is not None:
                with contextlib.suppress(Exception):  # a listener's failure must not stop supervision
                    self._on_change()
            seen = now

    def _next_wait(self) -> float:
        """A tick, or less when a starting replica's next probe is due sooner."""
        with self._lock:
            due = [r.next_probe_at for r in self._replicas.values() if r.state is ReplicaState.STARTING and r.pid]
        if not due:
            return self._tick_s
        return min(self._tick_s, max(0.001, min(due) - time.monotonic()))

    def _states(self) -> dict[tuple[str, int], tuple[ReplicaState, int]]:
        with self._lock:
            return {key: (r.state, r.restarts) for key, r in self._replicas.items()}

    def _check(self, replica: _Replica) -> None:
        now = time.monotonic()
        if replica.state is ReplicaState.STOPPING:
            return
        if replica.restart_at is not None:
            if now >= replica.restart_at:
                with self._lock:
                    if replica.restart_at is not None:  # not stopped meanwhile (stop() clears it)
                        self._spawn(replica)
            return
        if replica.state is ReplicaState.FAILED:
            return
        exit_code = self._exit_code(replica)
        if exit_code is not None:
            self._crashed(replica, describe_exit(exit_code))
            return
        self._rotate_log(replica)
        if now < replica.next_probe_at:
            return
        timeout_s = replica.launch.health.timeout_ms / 1000
        result = self._prober(
            replica.launch.address, probe_spec(replica.launch.backend_type), replica.launch.backend_type, timeout_s
        )
        self._probed(replica, result, time.monotonic())

    def _probed(self, replica: _Replica, result: ProbeResult, now: float) -> None:
        health = replica.launch.health
        with self._changed:
            if replica.state is ReplicaState.STOPPING or replica.restart_at is not None:
                return
            if result.in_flight is not None:
                replica.in_flight = result.in_flight
                if result.in_flight > 0:
                    replica.last_used_ms = time.time_ns() // 1_000_000
            if replica.state is ReplicaState.STARTING:
                # While starting, probe at every tick: a refused connection costs microseconds, and the
                # moment the backend answers is the moment the replica can take traffic.
                fast = now - replica.started_at < FAST_START_WINDOW_S
                step = FAST_START_PROBE_S if fast else self._tick_s
                replica.next_probe_at = now + min(step, health.interval_ms / 1000)
                if result.outcome is ProbeOutcome.HEALTHY:
                    replica.state, replica.failures, replica.healthy_once = ReplicaState.RUNNING, 0, True
                    replica.next_probe_at = now + health.interval_ms / 1000
                    self._changed.notify_all()
                elif now - replica.started_at > health.startup_timeout_ms / 1000:
                    self._terminate(replica, 2.0)
                    self._crashed(
                        replica, f"not healthy within the startup timeout ({health.startup_timeout_ms} ms)"
                    )
                return
            replica.next_probe_at = now + health.interval_ms / 1000
            if result.outcome is ProbeOutcome.HEALTHY:
                if replica.state is not ReplicaState.RUNNING:
                    replica.state = ReplicaState.RUNNING
                    self._changed.notify_all()
                replica.failures = 0
                if replica.streak and now - replica.started_at >= self._stable_after_s:
                    replica.streak = 0  # stable again: the next crash starts over at the first delay
                return
            if result.outcome is ProbeOutcome.BUSY:
                return  # a single-threaded server in a long generation cannot answer: busy is not dead
            replica.failures += 1
            replica.last_error = f"health probe failed: {result.detail}"
            if replica.failures >= health.failure_threshold and replica.state is not ReplicaState.UNHEALTHY:
                replica.state = ReplicaState.UNHEALTHY
                self._changed.notify_all()

    def _crashed(self, replica: _Replica, why: str) -> None:
        """The process is gone: restart it after the policy's delay, or mark the replica failed."""
        policy = replica.launch.restart
        with self._changed:
            if replica.state is ReplicaState.STOPPING:
                return
            replica.last_error = why
            # The leader is gone: what it left of its group goes too, before anything starts again.
            _kill_leftovers(replica.pgid, replica.marker, time.monotonic())
            _forget_process(replica)
            limit_reached = policy.max_restarts != -1 and replica.streak >= policy.max_restarts
            if not policy.auto_restart or limit_reached:
                tail = self.log_tail(replica)
                replica.state = ReplicaState.FAILED
                said = first_error_line(tail)
                replica.last_error = (
                    (f"{why}; gave up after {replica.streak} restarts" if policy.auto_restart else why)
                    + (f": {said}" if said else "")
                    + ("\n" + "\n".join(tail) if tail else "")
                )
                log.error("replica %s failed: %s", _name(replica), replica.last_error.partition("\n")[0])
                self._changed.notify_all()
                return
            if replica.started_at and time.monotonic() - replica.started_at >= self._stable_after_s:
                replica.streak = 0
            delay_ms = min(policy.restart_delay_ms * 2**replica.streak, policy.restart_max_delay_ms)
            replica.restart_at = time.monotonic() + delay_ms / 1000
            replica.state = ReplicaState.STARTING
            replica.streak += 1
            replica.restarts += 1
            log.warning(
                "replica %s %s; restart %d in %s", _name(replica), why, replica.restarts, _seconds(delay_ms)
            )
            self._changed.notify_all()

    # processes ----------------------------------------------------------------------------------------------

    def _spawn(self, replica: _Replica) -> None:
        if replica.restarts and not is_free(replica.launch.host, replica.launch.port):
            self._move_port(replica)
        launch = replica.launch
        env = self._environment(replica)
        if env is None:
            return
        _forget_process(replica)
        replica.marker = env[MARKER_VARIABLE] = f"{launch.instance}/{launch.replica}/{token_hex(8)}"
        if not self._record(replica):  # first the record, with the marker: a later agent can find what starts now
            return
        popen = self._start_process(replica, env)
        if isinstance(popen, str):
            replica.started_at = time.monotonic()  # a start that failed is no stable period
            self._crashed(replica, f"cannot start {_printable(launch.argv[0])}: {popen}")
            return
        process = psutil.Process(popen.pid)
        replica.popen, replica.process, replica.pid = popen, process, popen.pid
        replica.pgid = popen.pid  # start_new_session: it leads its own group
        replica.process_start = process.create_time()
        replica.started_at = time.monotonic()
        replica.next_probe_at = replica.started_at
        replica.restart_at = None
        replica.state = ReplicaState.STARTING
        replica.failures = 0
        self._record(replica)

    def _start_process(self, replica: _Replica, env: Mapping[str, str]) -> subprocess.Popen[bytes] | str:
        """Start the replica's process in its own session, its output appended to its log; or say, in words, why
        it could not start (a missing executable, a NUL byte in an argument or the environment, a log that cannot
        be opened): the caller counts that as a crash, under the restart policy."""
        launch = replica.launch
        problem = _unpassable(launch, env)
        try:
            with open_private(replica.log_path) as log:
                log.write(f"--- fleetd: starting {_printable(' '.join(launch.argv))}\n".encode())
                log.flush()
                if problem is None:
                    try:
                        return subprocess.Popen(
                            launch.argv,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            env=env,
                            start_new_session=True,  # it outlives this agent, and is killed as a group
                            close_fds=True,
                        )
                    except (OSError, ValueError) as exc:  # ValueError: what the OS cannot be handed at all
                        problem = str(exc)
                log.write(f"--- fleetd: cannot start: {problem}\n".encode())
        except OSError as exc:
            problem = problem or f"cannot write its log {replica.log_path}: {exc.strerror or exc}"
        return problem

    def _environment(self, replica: _Replica) -> dict[str, str] | None:
        """The replica's environment: the agent's, the launch's templates resolved (from the values sent with the
        load, else the agent's environment), ``PORT`` and ``HOST``; ``None`` when a reference cannot be resolved
        (the replica is then failed, saying which)."""
        launch = replica.launch
        env = dict(os.environ)
        sent = self._secrets.get(launch.key)
        source: Mapping[str, str] = {**os.environ, **sent.values} if sent is not None else os.environ
        try:
            env.update({key: expand(template, source) for key, template in launch.env})
        except KeyError as exc:
            replica.restart_at = None
            replica.state = ReplicaState.FAILED
            replica.last_error = (
                f"environment variable {exc.args[0]} was not sent by the controller and is not set on this node"
            )
            self._changed.notify_all()
            return None
        env.update({"PORT": str(launch.port), "HOST": launch.host})
        return env

    def _move_port(self, replica: _Replica) -> None:
        """Another process took the port while the replica was down: restart it on a free one. Unmovable, or no
        port left: it starts on its own port, fails to bind, and its log says so."""
        launch = replica.launch
        if not movable(launch):
            return
        try:
            port = self._ports.allocate()
        except PortsExhausted:
            return
        self._ports.release(launch.port)
        replica.launch = with_port(launch, port)
        note = f"port {launch.port} is taken by another process; restarting on port {port}"
        replica.last_error = f"{replica.last_error}; {note}" if replica.last_error else note
        with contextlib.suppress(OSError), open_private(replica.log_path) as out:
            out.write(f"--- fleetd: {note}\n".encode())
        log.warning("replica %s: %s", _name(replica), note)

    def _exit_code(self, replica: _Replica) -> int | None:
        if replica.popen is not None:
            return replica.popen.poll()
        process = replica.process
        if process is None:
            return -1
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            pass
        return -1

    def _terminate(self, replica: _Replica, grace_s: float) -> None:
        """SIGTERM the replica's process group, SIGKILL it after ``grace_s``; then what is left of the group once
        its leader is gone (a child that ignores SIGTERM, or one whose leader had already exited) gets the rest
        of the grace period and SIGKILL."""
        deadline = time.monotonic() + grace_s
        pgid = replica.pgid if replica.pgid is not None else replica.pid
        if pgid is not None and self._exit_code(replica) is None:
            self._signal_group(replica, pgid, grace_s)
        _kill_leftovers(pgid, replica.marker, deadline)

    def _signal_group(self, replica: _Replica, pgid: int, grace_s: float) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        if replica.popen is not None:  # our child: wait on it directly, no polling delay
            with contextlib.suppress(subprocess.TimeoutExpired):
                replica.popen.wait(timeout=grace_s)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._exit_code(replica) is None:
            self._stop.wait(0.02)
        if self._exit_code(replica) is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            if replica.popen is not None:
                replica.popen.wait(timeout=5)
            elif replica.process is not None:
                with contextlib.suppress(psutil.Error):
                    replica.process.wait(timeout=5)

    # state files and adoption -------------------------------------------------------------------------------

    def _state_file(self, launch: Launch) -> Path:
        return self._dir / f"{launch.instance}.{launch.replica}.json"

    def _write_state(self, replica: _Replica) -> None:
        """Write the replica's record atomically (a temporary file renamed over it); raises ``OSError``."""
        launch = replica.launch
        record = {
            "launch": asdict(launch),
            "pid": replica.pid,
            "process_start": replica.process_start,
            "marker": replica.marker,
            "pgid": replica.pgid,
            "restarts": replica.restarts,
        }
        path = self._state_file(launch)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record, sort_keys=True))
            tmp.replace(path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def _record(self, replica: _Replica) -> bool:
        """Write the replica's record; when it cannot be written (disk full, read-only state dir), no process of
        the replica may run, since no later agent could find it: stop what was started and fail the replica."""
        try:
            self._write_state(replica)
        except OSError as exc:
            started = replica.popen is not None
            if replica.popen is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(replica.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.popen.wait(timeout=5)
            _forget_process(replica)
            replica.restart_at = None
            replica.state = ReplicaState.FAILED
            replica.last_error = (
                f"cannot write the state file {self._state_file(replica.launch)} ({exc.strerror or exc}), without "
                f"which a restarted agent could not find the process; {'stopped it' if started else 'not started'}"
            )
            log.error("replica %s: %s", _name(replica), replica.last_error)
            self._changed.notify_all()
            return False
        return True

    def _forget_state(self, launch: Launch) -> None:
        try:
            self._state_file(launch).unlink(missing_ok=True)
        except OSError as exc:
            log.error("replica %s/%d: cannot remove its state file: %s", launch.instance, launch.replica, exc)

    def _adopt_all(self) -> None:
        for path in sorted(self._dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                launch = _launch_from(record["launch"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring the unreadable state file %s: %s", path, exc)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            replica = _Replica(launch, path.with_suffix(".log"), restarts=int(record.get("restarts", 0)))
            self._ports.claim(launch.port)
            process = _matching_process(record, launch.argv)
            marker = _text_or_none(record.get("marker"))
            if process is None and record.get("pid") is None and marker is not None:
                process = _marked_leader(marker)  # recorded, started, and the agent died before the pid was
            with self._lock:
                self._replicas[launch.key] = replica
                if process is None:
                    # It died while no agent watched: start it again (the policy decides when), never twice; and
                    # what its leader left of its group goes (``_crashed``).
                    replica.marker, replica.pgid = marker, _int_or_none(record.get("pgid"))
                    replica.state = ReplicaState.STARTING
                    self._crashed(replica, "exited while the agent was down")
                    continue
                self._adopt(replica, process, record)

    def _adopt(self, replica: _Replica, process: psutil.Process, record: Mapping[str, object]) -> None:
        replica.process, replica.pid = process, process.pid
        replica.marker = _text_or_none(record.get("marker"))
        replica.pgid = _int_or_none(record.get("pgid")) or process.pid
        start = record.get("process_start")
        replica.process_start = start if isinstance(start, float | int) else None
        replica.started_at = time.monotonic()
        replica.next_probe_at = replica.started_at
        replica.state = ReplicaState.STARTING  # until the first probe says it is healthy
        if replica.process_start is None:  # found by its marker: complete the record
            with contextlib.suppress(psutil.Error):
                replica.process_start = process.create_time()
            with contextlib.suppress(OSError):
                self._write_state(replica)

    def log_tail(self, replica: _Replica, lines: int = LOG_TAIL_LINES) -> tuple[str, ...]:
        """The last lines of the replica's log, with the values of its ``${env:…}`` references replaced by
        ``***``: a backend that prints its token on the way down must not put it in ``last_error``, the registry,
        ``status`` or the serve log, which all show this tail."""
        try:
            with replica.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16_384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ()
        tail = tuple(line for line in text.splitlines() if line.strip())[-lines:]
        return tuple(scrub(line, self._secret_values(replica.launch)) for line in tail)

    def _secret_values(self, launch: Launch) -> tuple[str, ...]:
        """What the launch's ``${env:NAME}`` references resolve to now (sent values first), longest first."""
        names = {name for _key, template in launch.env for name in ENV_REFERENCE.findall(template)}
        sent = self._secrets.get(launch.key)
        source: Mapping[str, str] = {**os.environ, **sent.values} if sent is not None else os.environ
        found = {source[name] for name in names if len(source.get(name, "")) >= MIN_SECRET_CHARS}
        return tuple(sorted(found, key=len, reverse=True))

    def _rotate_log(self, replica: _Replica) -> None:
        """Copy and truncate a log past its size limit; the process keeps its append-mode descriptor."""
        try:
            if replica.log_path.stat().st_size <= self._log_max_bytes:
                return
            rotated = rotated_path(replica.log_path)
            with open_private(rotated, append=False) as copy:
                copy.write(replica.log_path.read_bytes())
            with replica.log_path.open("r+b") as f:
                f.truncate(0)
        except OSError:
            return

    def _status(self, replica: _Replica) -> ReplicaStatus:
        launch = replica.launch
        return ReplicaStatus(
            instance=launch.instance,
            replica=launch.replica,
            state=replica.state,
            config_hash=launch.config_hash,
            address=launch.address,
            pid=replica.pid,
            process_start=f"{replica.process_start:.3f}" if replica.process_start is not None else None,
            container=launch.container,
            restarts=replica.restarts,
            last_error=replica.last_error,
            in_flight=replica.in_flight,
            last_used_ms=replica.last_used_ms,
            vram_bytes=launch.vram_bytes,
            log_tail=self.log_tail(replica) if replica.state is ReplicaState.FAILED else (),
        )


def _forget_process(replica: _Replica) -> None:
    """The replica has no process (it exited, or none is started yet)."""
    replica.popen, replica.process, replica.pid, replica.pgid, replica.process_start = None, None, None, None, None


def _name(replica: _Replica) -> str:
    return f"{replica.launch.instance}/{replica.launch.replica}"


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g} s"


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def open_private(path: Path, *, append: bool = True) -> BinaryIO:
    """``path`` opened for writing, created readable by this user only (a replica's log can hold what its
    backend printed)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "ab" if append else "wb")


def describe_exit(code: int) -> str:
    """How a process ended, as an operator reads it: ``killed by SIGKILL`` (a negative status is a signal, as
    ``subprocess`` reports it), ``exited with status 1``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def expand(template: str, source: Mapping[str, str]) -> str:
    """``template`` with its ``${env:NAME}`` references replaced from ``source`` (``KeyError`` names one unset)."""
    return ENV_REFERENCE.sub(lambda m: source[m.group(1)], template)


def _launch_from(data: Mapping[str, object]) -> Launch:
    restart = data["restart"]
    health = data["health"]
    argv = data["argv"]
    env = data["env"]
    assert isinstance(restart, dict) and isinstance(health, dict) and isinstance(argv, list)
    assert isinstance(env, list)
    return Launch(
        instance=str(data["instance"]),
        replica=int(str(data["replica"])),
        backend_type=BackendType(str(data["backend_type"])),
        argv=tuple(str(a) for a in argv),
        env=tuple((str(k), str(v)) for k, v in env),
        host=str(data["host"]),
        port=int(str(data["port"])),
        config_hash=str(data["config_hash"]),
        vram_bytes=int(str(data["vram_bytes"])),
        restart=RestartPolicy(**restart),
        health=HealthPolicy(**health),
        container=str(data["container"]) if data.get("container") else None,
        port_slots=_slots_from(data.get("port_slots")),
    )


def _slots_from(value: object) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(int(i) for i in value if isinstance(i, int))


def _unpassable(launch: Launch, env: Mapping[str, str]) -> str | None:
    """What no process can be started with: a NUL byte in an argument or in an environment value (the variable is
    named, its value never shown: it may be a secret). ``fleetd validate`` refuses these in a manifest; a launch
    can still carry one from a value sent with the load or from an older state file."""
    for i, argument in enumerate(launch.argv):
        if "\x00" in argument:
            return f"argument {i} of the command contains a NUL byte (\\0), which no process can be given"
    for key, _ in launch.env:
        if "\x00" in env.get(key, ""):
            return f"environment variable {key} contains a NUL byte (\\0), which no process environment can carry"
    return None


def _printable(text: str) -> str:
    return text.replace("\x00", "\\0")


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _same_command(cmdline: tuple[str, ...], argv: tuple[str, ...]) -> bool:
    """Whether a process's command line is the one we started: equal, or, for a script whose interpreter
    (``#!``) or ``exec`` replaced the first words, ending with the same arguments. Only for a state file written
    before markers existed."""
    return cmdline == argv or (len(argv) > 1 and cmdline[-(len(argv) - 1) :] == argv[1:])


def _matching_process(record: Mapping[str, object], argv: tuple[str, ...]) -> psutil.Process | None:
    """The recorded process if it is still the one we started: the same pid with the same start time (to the
    clock tick: a pid is not reused within one), not a zombie, and then either its marker (``_not_another``) or,
    for a record without one, its arguments."""
    pid, start, marker = record.get("pid"), record.get("process_start"), record.get("marker")
    if not isinstance(pid, int) or not isinstance(start, int | float):
        return None
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - start) > 0.01 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        if isinstance(marker, str):
            if not _not_another(process, marker):
                return None
        elif not _same_command(tuple(process.cmdline()), argv):
            return None
    except psutil.Error:
        return None
    return process


def _kill_leftovers(pgid: int | None, marker: str | None, deadline: float) -> None:
    """Wait until ``deadline`` for what is left of a replica's process group after its leader, then SIGKILL it.
    Only the processes of that group that carry the replica's marker: a group id reused since is never hit, and a
    replica started before markers (no ``marker``) is left as before. No group left (the usual case) costs one
    ``killpg(pgid, 0)``."""
    if pgid is None or marker is None:
        return
    try:
        os.killpg(pgid, 0)
    except OSError:
        return
    left: list[psutil.Process] = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == pgid and process.environ().get(MARKER_VARIABLE) == marker:
                left.append(process)
    while (left := [p for p in left if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)  # not our children: polled (an exited one stays a zombie until its new parent reaps it)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _marked_leader(marker: str) -> psutil.Process | None:
    """The live process that leads its own process group and carries ``marker`` in its environment: what a start
    recorded before the agent could record its pid. A process that only inherited the marker (a child of the
    replica) leads no group and is not it."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != process.pid:
                continue
            if process.environ().get(MARKER_VARIABLE) == marker and process.status() != psutil.STATUS_ZOMBIE:
                return process
        except (OSError, psutil.Error):
            continue
    return None


def _not_another(process: psutil.Process, marker: str) -> bool:
    """Whether the process's environment does not name another replica. Its marker when it can be read and
    carries one; an unreadable environment (another user's process), or one without the variable (a process
    that rewrote its environment area for its title, as ``setproctitle`` does), leaves the decision to the pid
    and its start time."""
    try:
        found = process.environ().get(MARKER_VARIABLE)
    except psutil.AccessDenied:
        return True
    return found is None or found == marker
