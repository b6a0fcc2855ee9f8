"""The Prometheus metrics of ``fleetd serve``, in a registry of their own (not the process-global one).

A cycle's result updates them: how long it took, which actions ran with which outcome, the drift the plan
found, the lost nodes' replicas re-placed (and deferred by the budget), replicas per state and nodes per status, the current manifest's error count, and whether this
controller leads. An operator alerts on ``fleetd_manifest_errors > 0`` (a bad edit is being ignored) and on
``fleetd_drift`` staying above zero (the fleet does not converge).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from fleetd.controlling.reconciling import CycleResult
from fleetd.core.observed import NodeStatus, ObservedState, ReplicaState
from fleetd.planning.plans import Reason
from fleetd.transport.bus_messages import DROP_REASONS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.cycle_duration = Histogram(
            "fleetd_cycle_duration_seconds",
            "Duration of reconcile cycles (observe, plan, apply).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.actions = PromCounter(
            "fleetd_actions", "Actions executed, by kind and outcome.", ["kind", "outcome"], registry=self.registry
        )
        self.drift = Gauge("fleetd_drift", "Actions in the last plan.", registry=self.registry)
        self.replicas = Gauge("fleetd_replicas", "Replicas by state.", ["state"], registry=self.registry)
        self.nodes = Gauge("fleetd_nodes", "Nodes by status.", ["status"], registry=self.registry)
        self.manifest_errors = Gauge(
            "fleetd_manifest_errors", "Errors of the current manifest (0 when valid).", registry=self.registry
        )
        self.leader = Gauge("fleetd_leader", "1 while this controller holds the lease.", registry=self.registry)
        self.heartbeats = Gauge(
            "fleetd_heartbeats_accepted", "Heartbeats accepted since start (total).", registry=self.registry
        )
        self.heartbeats_dropped = Gauge(
            "fleetd_heartbeats_dropped",
            "Heartbeats dropped since start, by reason (total).",
            ["reason"],
            registry=self.registry,
        )
        self.bus_suspect = Gauge(
            "fleetd_bus_suspect",
            "1 while more than half of the nodes are silent together: suspect the bus; nothing is re-placed.",
            registry=self.registry,
        )
        self.replacements = PromCounter(
            "fleetd_replacements",
            "Replicas of lost nodes forgotten and re-placed elsewhere.",
            registry=self.registry,
        )
        self.replacements_deferred = Gauge(
            "fleetd_replacements_deferred",
            "Replicas of lost nodes the last plan left for the next cycle (--max-replacements).",
            registry=self.registry,
        )
        self.registrations_refused = Gauge(
            "fleetd_registrations_refused",
            "Registrations refused since start, by reason (total).",
            ["reason"],
            registry=self.registry,
        )

    def bus(self, accepted: int, dropped: Mapping[str, int], refused: Mapping[str, int], *, suspect: bool) -> None:
        """The bus's counters (kept by the ingest and admission), copied at each scrape."""
        self.bus_suspect.set(1 if suspect else 0)
        self.heartbeats.set(accepted)
        for reason in DROP_REASONS:
            self.heartbeats_dropped.labels(reason).set(dropped.get(reason, 0))
        for reason, count in refused.items():
            self.registrations_refused.labels(reason).set(count)

    def record(self, result: CycleResult) -> None:
        self.cycle_duration.observe(result.duration_s)
        for outcome in result.report.outcomes if result.report is not None else ():
            self.actions.labels(outcome.kind, outcome.status).inc()
        self.drift.set(len(result.plan.actions) if result.plan is not None else 0)
        self.replacements_deferred.set(result.plan.deferred if result.plan is not None else 0)
        if result.plan is not None and result.report is not None:
            lost = {a.id for a in result.plan.actions if a.reason is Reason.NODE_LOST}
            self.replacements.inc(
                sum(1 for o in result.report.outcomes if o.action_id in lost and o.status == "ok")
            )
        self.manifest_errors.set(result.manifest_errors)
        self.observed(result.observed)

    def observed(self, observed: ObservedState) -> None:
        replicas = Counter(r.state for r in observed.replicas)
        for state in ReplicaState:
            self.replicas.labels(state.value).set(replicas.get(state, 0))
        nodes = Counter(n.status for n in observed.nodes)
        for status in NodeStatus:
            self.nodes.labels(status.value).set(nodes.get(status, 0))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
