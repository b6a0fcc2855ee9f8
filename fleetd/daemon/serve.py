"""``fleetd serve``: reconcile continuously, as Argo CD's self-heal does for Kubernetes (architecture.md §1, §3).

The wiring of the parts, nothing more: triggers (interval tick, manifest watcher, SIGHUP, leadership changes,
replica events from the agent) funnel into one worker that runs ``Reconciler.cycle`` one at a time; the
``controller`` lease decides whether this process runs cycles at all; the embedded agent (which supervises the
replica processes: restarts, probes) is opened only while leading, so two controllers on one machine never
both supervise one process; an HTTP server answers probes, metrics and status; systemd hears READY and
WATCHDOG.

Shutdown (SIGTERM/SIGINT) stops the triggers, lets the current cycle finish, gives the lease up and closes the
agent, leaving the replicas running (the next controller adopts them) unless ``stop_on_exit``. The wait for the
cycle is bounded (``stop_timeout_s``): a cycle that does not finish in time is left behind, said in one line,
and the process exits 1 at once.

Liveness is progress (issue 15): ``/healthz``, ``/readyz`` and the systemd watchdog say healthy while the
worker's cycle, if one runs, has moved on within ``stuck_after_s`` (default: 5 intervals, at least 5 minutes),
or within the deadline of the longest load the cycle applies. An ended action and a backend install's output
(and its 30 s heartbeats) count as progress.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from fleetd.controlling.cycles import longest_step_s
from fleetd.controlling.distributed import DistributedFleet, Layout, layout_of
from fleetd.controlling.embedded import EmbeddedFleet
from fleetd.controlling.heartbeats import LOST_AFTER_MS, UNHEALTHY_AFTER_MS
from fleetd.controlling.leadership import Leadership
from fleetd.controlling.opening import AgentAccess, OpenFleet, fleet_kind, open_fleet
from fleetd.controlling.reconciling import CycleResult, Reconciler, action_lines, summary_line
from fleetd.controlling.replica_events import replica_events, still_announced
from fleetd.controlling.sources import PathSource
from fleetd.core.desired import DesiredState
from fleetd.core.observed import ObservedReplica
from fleetd.core.timestamps import iso_from_ms
from fleetd.daemon.controller_bus import ControllerBus
from fleetd.daemon.http_api import Endpoints, HttpApi
from fleetd.daemon.log_format import FieldValue, LogFormat, configure_logging
from fleetd.daemon.metrics import Metrics
from fleetd.daemon.sd_notify import notify, watch_until
from fleetd.daemon.triggers import CycleWorker, ManifestWatcher, SpacedTrigger, interval_scheduler
from fleetd.executing import Fence
from fleetd.executing.report import ActionOutcome
from fleetd.planning.planner import PlanPolicy
from fleetd.planning.plans import Plan, Unschedulable
from fleetd.planning.rendering import rejection_words, unschedulable_line
from fleetd.registry.engine import default_state_dir
from fleetd.registry.facade import open_registry
from fleetd.transport.agent_api import CallerFence, InstallProgress, ReplicaStatus
from fleetd.transport.certificates import Authority, authority_dir, ensure_authority
from fleetd.transport.security import INSECURE_MARK

log = logging.getLogger("fleetd.serve")
REPLICA_EVENT_GAP_S = 0.25
"""At most four cycles a second come from replica events (crash loops); manifest edits are not spaced."""
STUCK_AFTER_MIN_S = 300.0
"""A cycle may go at least this long without progress before the daemon says it is stuck (with 5 intervals)."""
STOP_TIMEOUT_S = 20.0
"""How long a stop waits for the running cycle: under the unit's ``TimeoutStopSec=30s``, so fleetd says why."""


def default_stuck_after_s(interval_s: float) -> float:
    """``max(5 × interval, 5 min)``: how long a cycle may go without progress by default."""
    return max(5 * interval_s, STUCK_AFTER_MIN_S)


@dataclass(frozen=True, slots=True)
class Liveness:
    """When a silent node is ``unhealthy`` and when ``lost``, and how many of the lost nodes' replicas one
    cycle re-places (``--unhealthy-after``, ``--lost-after``, ``--max-replacements``)."""

    unhealthy_after_ms: int = UNHEALTHY_AFTER_MS
    lost_after_ms: int = LOST_AFTER_MS
    max_replacements: int = PlanPolicy().max_replacements

    def __post_init__(self) -> None:
        if not 0 < self.unhealthy_after_ms < self.lost_after_ms:
            raise ValueError("--unhealthy-after must be positive and shorter than --lost-after")
        if self.max_replacements < 1:
            raise ValueError("--max-replacements must be at least 1")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    paths: tuple[Path, ...]
    interval_s: float = 10.0
    http: tuple[str, int] | None = ("127.0.0.1", 9464)
    stop_on_exit: bool = False
    database_url: str | None = None
    state_dir: Path | None = None
    lease_ttl_s: float = 15.0
    watch: bool = True
    access: AgentAccess = field(default_factory=AgentAccess)
    """How remote agents are reached, when the manifest's nodes have addresses."""
    nats_url: str | None = None
    nats_listen: tuple[str, int] | None = None
    """Run the bundled nats-server here (and use it)."""
    liveness: Liveness = field(default_factory=Liveness)
    log_format: LogFormat = LogFormat.LOGFMT
    stuck_after_s: float | None = None
    """A cycle without progress this long is stuck (``None``: ``default_stuck_after_s(interval_s)``)."""
    stop_timeout_s: float = STOP_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class _Seen:
    """The last cycle as ``/status`` shows it, with the agent's replica list taken right after it."""

    result: CycleResult
    replicas: tuple[ReplicaStatus, ...]


class Daemon:
    def __init__(self, options: ServeOptions) -> None:
        self._options = options
        self._state_dir = options.state_dir or default_state_dir()
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._url = options.database_url or f"sqlite:///{self._state_dir / 'fleetd.db'}"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._seen: _Seen | None = None
        self._last_applying: CycleResult | None = None
        self._cycles = 0
        """Reconcile cycles completed (a follower completes none)."""
        self._last_error: str | None = None
        self._shown_problem: str | None = None
        self._ready_sent = False
        self._known: dict[tuple[str, str, int], ObservedReplica] = {}
        """The replicas of the last cycle, by (instance, node, index): what ``replica_events`` compares to."""
        self._announced: dict[tuple[str, str, int], str | None] = {}
        """The address each replica was last said ready at."""
        self._digest: str | None = None
        self._unschedulable: dict[str, str] = {}
        self._notes: set[str] = set()
        self._fleet: OpenFleet | None = None
        """Used by the worker thread only (and by ``stop`` after the worker ended)."""
        self._fleet_kind: tuple[bool, str | None] | None = None
        self._stuck_shown: float | None = None
        """The allowance a stuck cycle was said to have passed, while it stays stuck."""
        self.finished = True
        """Whether the last ``stop`` saw the running cycle finish."""
        self.metrics = Metrics()
        self.reconciler = Reconciler(
            PathSource(options.paths),
            policy=PlanPolicy(max_replacements=options.liveness.max_replacements),
            who=f"serve:{socket.gethostname()}:{os.getpid()}",
            on_progress=self._install_progress,
            on_apply=self._applying,
            on_event=self._action_ended,
        )
        stuck_after_s = options.stuck_after_s or default_stuck_after_s(options.interval_s)
        self.worker = CycleWorker(self._cycle, on_error=self._cycle_failed, stuck_after_s=stuck_after_s)
        self._replica_events = SpacedTrigger(self.worker.trigger, min_gap_s=REPLICA_EVENT_GAP_S)
        self._registry = open_registry(self._url)
        self.leadership = Leadership(
            self._registry,
            f"serve:{socket.gethostname()}:{os.getpid()}",
            ttl_ms=int(options.lease_ttl_s * 1000),
            on_change=self._leadership_changed,
            lock=self._registry.instance_lock,
        )
        self.watcher = ManifestWatcher(options.paths, self._manifest_changed) if options.watch else None
        self.scheduler = interval_scheduler(self.worker.trigger, interval_s=options.interval_s)
        self.http = HttpApi(options.http, self._endpoints()) if options.http is not None else None
        self._access, authority = self._fleet_ca(options.access)
        self.bus: ControllerBus | None = None
        if options.nats_url is not None or options.nats_listen is not None:
            self.bus = ControllerBus(
                self._registry,
                self._state_dir,
                url=options.nats_url,
                listen=options.nats_listen,
                on_change=self._replica_events,
                say=self._say,
                unhealthy_after_ms=options.liveness.unhealthy_after_ms,
                lost_after_ms=options.liveness.lost_after_ms,
                authority=authority,
            )

    def _fleet_ca(self, access: AgentAccess) -> tuple[AgentAccess, Authority | None]:
        """TLS on by default: without ``--tls-*`` files or ``--insecure``, the fleet's CA in the state dir
        (created at the first start) signs the nodes' certificates and this controller's. Raises
        ``CertificateError``."""
        if access.insecure:
            self._say(f"{INSECURE_MARK} --insecure: agents are reached and nodes admitted WITHOUT TLS")
            return access, None
        if access.tls is not None:
            return access, None
        where = authority_dir(self._state_dir)
        authority, created = ensure_authority(where)
        self._say(
            f"{'created the' if created else 'TLS: the'} fleet's CA in {where} (it signs the nodes' certificates)"
        )
        return replace(access, ca_dir=where), authority

    # lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        where = ", ".join(str(p) for p in self._options.paths)
        http = self.http.address if self.http is not None else "off"
        self._say(f"watching {where}; http on {http}")
        if self.http is not None:
            self.http.start()
        if self.bus is not None:
            self.bus.start()
        self.worker.start()
        self.leadership.start()
        if self.leadership.fence is None and self.leadership.registry_lost is None:
            self._say(self._waiting_line())
            self._ready_sent = notify("READY=1") or True
        if self.watcher is not None:
            self.watcher.start()
        self.scheduler.start()
        self.worker.trigger()

    def run(self) -> int:
        """Start, then wait for SIGTERM/SIGINT (SIGHUP re-reads the manifest); returns the exit status."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self.start()
        watch_until(self._stopping, self._alive)
        return 0 if self.stop() else 1

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> bool:
        """Stop the triggers, finish the current cycle (waiting at most ``stop_timeout_s``), give the lease up,
        close the agent and the server. ``False`` when the cycle did not finish: the fleet is then left as the
        cycle holds it (its agent not closed, its replicas running, the lease left to run out), and the caller
        must exit at once."""
        deadline = time.monotonic() + self._options.stop_timeout_s
        self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop(timeout_s=self._options.stop_timeout_s)
        self._replica_events.cancel()
        busy_s = self.worker.busy_for()
        self.finished = self.worker.stop(timeout_s=max(0.0, deadline - time.monotonic()))
        if self.finished:  # else the cycle may hold the registry: the lease runs out by itself after its TTL
            self.leadership.stop()
        if self.bus is not None:
            self.bus.stop()
        if self.finished:
            self._close_fleet(stop_replicas=self._options.stop_on_exit)
            self._registry.engine.dispose()
        if self.http is not None:
            self.http.stop()
        if not self.finished:
            self._say(
                f"the reconcile cycle did not finish within {self._options.stop_timeout_s:g} s of the stop request "
                f"(it had run {busy_s or 0:.0f} s by then): exiting without it, status 1; replicas left running "
                "(the next controller adopts them)",
                level=logging.ERROR,
                event="stop_timeout",
            )
            return False
        self._say("stopped" + ("; replicas stopped" if self._options.stop_on_exit else "; replicas left running"))
        return True

    @property
    def last_cycle(self) -> CycleResult | None:
        with self._lock:
            return self._seen.result if self._seen is not None else None

    @property
    def last_applying_cycle(self) -> CycleResult | None:
        """The last cycle that applied a plan (a quiet cycle often follows it, on the replica events)."""
        with self._lock:
            return self._last_applying

    # the worker's cycle -------------------------------------------------------------------------------------

    def _cycle(self) -> None:
        registry_kept = self.leadership.verify()  # a vanished SQLite registry ends leading before the cycle
        fence = self.leadership.fence
        if fence is None:
            self._close_fleet(stop_replicas=False)  # another controller leads: it supervises the replicas
            if registry_kept:
                self.metrics.observed(self._registry.snapshot())  # what the leader recorded: dashboards whole
            return
        fleet = self._open_fleet()
        result = self.reconciler.cycle(fleet, fence)
        replicas = _replicas_of(fleet, result)
        with self._lock:
            self._seen = _Seen(result, replicas)
            if result.report is not None:
                self._last_applying = result
            self._last_error = None
            self._cycles += 1
        self.metrics.record(result)
        self._report(result)
        self._replica_lines(fleet, result)
        if result.plan is not None and result.plan.deferred:
            self._replica_events()  # re-placements the budget deferred: the next cycle takes the next batch
        if not self._ready_sent:
            self._ready_sent = notify("READY=1") or True

    def _open_fleet(self) -> OpenFleet:
        """The fleet the manifest describes (embedded, or distributed when its nodes have addresses), reopened
        when an edit switches between the two or changes which node is this machine."""
        self.reconciler.manifest.read()
        kind = fleet_kind(self._layout())
        if self._fleet is not None and kind != self._fleet_kind:
            self._say("the manifest's nodes changed the fleet's layout: reopening it")
            self._close_fleet(stop_replicas=False)
        if self._fleet is None:
            self._fleet = open_fleet(
                self.reconciler.desired,
                database_url=self._options.database_url,
                access=self._access,
                fence=self._caller_fence,
                state_dir=self._state_dir,
                layout=self._layout,
                on_replica_change=self._replica_events,
                sweeps=self.bus is None,  # with a bus, the heartbeat ingest ages every node
            )
            self._fleet_kind = kind
            if kind[0]:
                how = INSECURE_MARK if self._access.insecure else "over mutual TLS"
                self._say(f"distributed fleet: agents reached {how}")
        return self._fleet

    def _layout(self) -> Layout:
        """The manifest's nodes and, with a bus, those that joined over it (read at every observation)."""
        joined = self._registry.joined_nodes() if self.bus is not None else ()
        return layout_of(self.reconciler.desired, joined=joined, bus=self.bus is not None)

    def _caller_fence(self) -> CallerFence | None:
        fence = self.leadership.fence
        return CallerFence(fence.epoch, fence.holder) if fence is not None else None

    def _close_fleet(self, *, stop_replicas: bool) -> None:
        if self._fleet is not None:
            fleet, self._fleet = self._fleet, None
            fleet.close(stop_replicas=stop_replicas)

    def _cycle_failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        with self._lock:
            self._last_error = message
        self._say(f"cycle failed: {message}", level=logging.ERROR, event="cycle_failed")

    def _report(self, result: CycleResult) -> None:
        """A line for a cycle that did something, and one when the manifest or plan problem changes."""
        if result.acted:
            self._say(summary_line(result), event="applied")
            for line in action_lines(result):
                self._say(line, event="action")
        self._desired_lines(result)
        problem = None
        if result.manifest_errors:
            kept = "keeping the last good desired state" if result.desired_digest else "nothing to reconcile yet"
            errors = f"{result.manifest_errors} error{'s' if result.manifest_errors != 1 else ''}"
            problem = f"manifest invalid ({errors}; {kept}): {result.error_messages[0]}"
        elif result.refused is not None:
            problem = f"plan refused: {result.refused}"
        if problem != self._shown_problem:
            if problem is not None:
                self._say(problem, level=logging.WARNING, event="problem")
            elif self._shown_problem is not None:
                self._say("manifest valid again" if "manifest" in self._shown_problem else "plan accepted")
            self._shown_problem = problem

    def _desired_lines(self, result: CycleResult) -> None:
        """A line when the desired state changes (a manifest edit took effect), and one for each instance whose
        unschedulable replicas or reasons changed (said again while they change, quiet while they stay)."""
        if result.desired_digest is not None and result.desired_digest != self._digest:
            revision = f" at {result.revision.label()}" if result.revision is not None else ""
            self._say(
                f"desired state {result.desired_digest[:19]}{revision} from the manifest",
                event="desired_state",
                digest=result.desired_digest,
            )
            self._digest = result.desired_digest
        if result.plan is None:
            return
        lines = {u.instance: unschedulable_line(u) for u in result.plan.unschedulable}
        for instance, line in sorted(lines.items()):
            if self._unschedulable.get(instance) != line:
                self._say(
                    f"unschedulable: {line}", level=logging.WARNING, event="unschedulable", instance=instance
                )
        self._unschedulable = lines
        notes = set(result.plan.notes)
        for note in sorted(notes - self._notes):
            self._say(f"note: {note}", level=logging.WARNING, event="plan_note")
        self._notes = notes

    def _replica_lines(self, fleet: OpenFleet, result: CycleResult) -> None:
        """A line for each replica event since the last cycle: ready (where to send requests), moved, restarted,
        failed. An in-process agent's supervisor already said a restart or a failure (with the delay)."""
        in_process = {fleet.agent.node} if isinstance(fleet, EmbeddedFleet) else set()
        current = {(r.instance, r.node, r.replica): r for r in result.observed.replicas}
        events = replica_events(self._known, current, announced=self._announced, quiet_nodes=in_process)
        for event in events:
            self._say(event.message, level=event.level, **event.fields)
        self._known = current
        self._announced = still_announced(self._announced, current)

    def _leadership_changed(self, fence: Fence | None) -> None:
        self.metrics.leader.set(1 if fence is not None else 0)
        lost = self.leadership.registry_lost
        if fence is not None:
            self._say(f"leading (lease {fence.lease}, epoch {fence.epoch})")
        elif lost is not None:
            self._say(
                f"{lost} under this controller: it stopped leading and writes nothing more; /readyz answers 503 "
                "until fleetd serve is restarted (restore the file first to keep its records)",
                level=logging.ERROR,
                event="registry_lost",
            )
        elif self._stopping.is_set():
            self._say("released the lease")
        else:
            self._say(self._waiting_line())
        if fence is None and not self._ready_sent:
            self._ready_sent = notify("READY=1") or True
        self.worker.trigger()

    def _waiting_line(self) -> str:
        leader = self.leadership.leader()
        return (
            f"not leading: {leader} leads; waiting for the lease"
            if leader
            else "not leading; waiting for the lease"
        )

    # signals and output -------------------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping.set()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._say("SIGHUP: reading the manifest again", event="sighup")
        self.worker.trigger()

    def _manifest_changed(self) -> None:
        self._say("the manifest changed on disk: reading it again", event="manifest_changed")
        self.worker.trigger()

    def _install_progress(self, event: InstallProgress) -> None:
        self.worker.progress()
        self._say(f"install {event.backend} ({event.step}): {event.message}")

    def _applying(self, plan: Plan, desired: DesiredState) -> None:
        """A cycle starts applying ``plan``: it may go as long as its longest load without progress."""
        self.worker.progress(longest_step_s(plan, desired))

    def _action_ended(self, outcome: ActionOutcome) -> None:
        self.worker.progress()

    def _alive(self) -> bool:
        """The worker runs and its cycle makes progress; the first time it does not (and when it moves on
        again), one line says so."""
        stuck = self.worker.stuck()
        with self._lock:
            shown, self._stuck_shown = self._stuck_shown, (stuck[1] if stuck is not None else None)
        if stuck is not None and shown is None:
            self._say(
                f"the reconcile cycle has made no progress for {stuck[0]:.0f} s (allowed {stuck[1]:.0f} s): /healthz "
                "and /readyz answer 503 and the systemd watchdog is not fed until it moves on",
                level=logging.ERROR,
                event="cycle_stuck",
            )
        elif stuck is None and shown is not None:
            self._say("the reconcile cycle moved on again", event="cycle_progress")
        return stuck is None and self.worker.alive() and not self._stopping.is_set()

    def _say(self, line: str, *, level: int = logging.INFO, **fields: FieldValue) -> None:
        log.log(level, line, extra={"fields": fields})

    # HTTP ---------------------------------------------------------------------------------------------------

    def _endpoints(self) -> Endpoints:
        return Endpoints(
            alive=self._alive,
            ready=self._ready,
            metrics=self._exposition,
            status=self.status,
        )

    def _exposition(self) -> bytes:
        if self.bus is not None:
            ingest = self.bus.ingest.counters
            self.metrics.bus(
                ingest.accepted,
                dict(ingest.dropped),
                dict(self.bus.admission.refused),
                suspect=self.bus.ingest.bus_suspect,
            )
        return self.metrics.exposition()

    def _ready(self) -> bool:
        if not self.leadership.registry_answered or self.leadership.registry_lost is not None:
            return False
        if self.worker.stuck() is not None:
            return False
        with self._lock:
            return self.leadership.fence is None or self._seen is not None

    def status(self) -> dict[str, Any]:
        with self._lock:
            seen, error, cycles = self._seen, self._last_error, self._cycles
        fence = self.leadership.fence
        status: dict[str, Any] = {
            "leader": fence is not None,
            "holder": self.leadership.holder,
            "epoch": fence.epoch if fence is not None else None,
            "cycles": cycles,
            "last_error": error,
            "registry_lost": self.leadership.registry_lost,
            "cycle_stuck_s": round(stuck[0], 1) if (stuck := self.worker.stuck()) is not None else None,
            "manifest": {"paths": [str(p) for p in self._options.paths]},
            "last_cycle": None,
            "last_plan": None,
            "last_apply": _report_json(self.reconciler),
            "replicas": [],
            "bus": None
            if self.bus is None
            else {
                "suspect": self.bus.ingest.bus_suspect,
                "heartbeats_accepted": self.bus.ingest.counters.accepted,
                "heartbeats_dropped": dict(self.bus.ingest.counters.dropped),
            },
        }
        if seen is not None:
            found = _seen_json(seen)
            status["manifest"].update(found.pop("manifest"))
            status.update(found)
        return status


def _seen_json(seen: _Seen) -> dict[str, Any]:
    result = seen.result
    plan = result.plan
    return {
        "last_cycle": {
            "started": iso_from_ms(result.started_ms),
            "duration_s": round(result.duration_s, 4),
            "outcome": result.outcome,
        },
        "manifest": {
            "errors": result.manifest_errors,
            "messages": list(result.error_messages),
            "desired_digest": result.desired_digest,
        },
        "last_plan": None
        if plan is None
        else {
            "summary": plan.summary(),
            "actions": [{"id": a.id, "reason": a.reason.value} for a in plan.actions],
            "unschedulable": [_unschedulable_json(u) for u in plan.unschedulable],
            "failed": plan.failed,
            "notes": list(plan.notes),
        },
        "refused": result.refused,
        "replicas": _replicas_json(seen),
    }


def _unschedulable_json(item: Unschedulable) -> dict[str, Any]:
    return {
        "instance": item.instance,
        "missing": item.missing,
        "reasons": [
            {"reason": code, "nodes": count, "words": rejection_words(code)} for code, count in item.reasons
        ],
        "line": unschedulable_line(item),
    }


def _replicas_json(seen: _Seen) -> list[dict[str, Any]]:
    """The replicas the last cycle observed on every node; the pid where this process's agent runs them (the
    agent's list is taken after the cycle: a replica started by it shows with its state then)."""
    local = {(r.instance, r.replica): r for r in seen.replicas}
    observed = {(r.instance, r.replica, r.node): r for r in seen.result.observed.replicas}
    rows: list[dict[str, Any]] = []
    for (instance, index, node), r in sorted(observed.items()):
        mine = local.get((instance, index))
        fresh = mine if mine is not None and mine.config_hash == r.config_hash else None
        last_error = fresh.last_error if fresh is not None else r.last_error
        rows.append(
            {
                "instance": instance,
                "replica": index,
                "node": node,
                "state": (fresh.state if fresh is not None else r.state).value,
                "address": fresh.address if fresh is not None else r.address,
                "pid": fresh.pid if fresh is not None else None,
                "config_hash": r.config_hash,
                "restarts": fresh.restarts if fresh is not None else r.restarts,
                "last_error": last_error.partition("\n")[0] if last_error else None,
            }
        )
    seen_keys = {(r["instance"], r["replica"]) for r in rows}
    for key, mine in sorted(local.items()):
        if key not in seen_keys:  # started after the cycle's last observation
            rows.append(
                {
                    "instance": mine.instance,
                    "replica": mine.replica,
                    "node": None,
                    "state": mine.state.value,
                    "address": mine.address,
                    "pid": mine.pid,
                    "config_hash": mine.config_hash,
                    "restarts": mine.restarts,
                    "last_error": mine.last_error.partition("\n")[0] if mine.last_error else None,
                }
            )
    return rows


def _report_json(reconciler: Reconciler) -> dict[str, Any] | None:
    report = reconciler.last_report
    if report is None:
        return None
    return {
        "plan_hash": report.plan_hash,
        "outcomes": [
            {"id": o.action_id, "status": o.status, "message": o.message, "duration_ms": o.duration_ms}
            for o in report.outcomes
        ],
    }


def _replicas_of(fleet: OpenFleet, result: CycleResult) -> tuple[ReplicaStatus, ...]:
    """The replicas as ``/status`` shows them: the embedded agent's own list (with pids), or in the
    distributed mode what the cycle observed on every node."""
    if isinstance(fleet, EmbeddedFleet):
        return fleet.agent.list_replicas()
    assert isinstance(fleet, DistributedFleet)
    return tuple(
        ReplicaStatus(r.instance, r.replica, r.state, r.config_hash, address=r.address, restarts=r.restarts)
        for r in result.observed.replicas
    )


def serve(options: ServeOptions) -> int:
    """Run the daemon until stopped; its exit status. When the running cycle did not finish within the stop
    timeout, the process ends here at once: that cycle's thread (and any it waits on) cannot be joined."""
    configure_logging(sys.stderr, options.log_format)
    daemon = Daemon(options)
    code = daemon.run()
    if not daemon.finished:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code
