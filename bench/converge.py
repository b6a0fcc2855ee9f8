"""Convergence benchmark (issue 6): manifest saved -> replica healthy, with ``fleetd serve`` running in-process.

The backend is the fake llama-server (tests/fakes/fake_backend.py), ready as soon as it listens, so the figures
are fleetd's own latency plus one Python interpreter start. Each edit flips the instance's ``ctx_size``, so each
one restarts the replica. Per edit it records:
- watch: from the save until the watcher noticed the change (watchfiles waits for 20 ms without further
  changes, so that an editor's several writes make one cycle);
- load/observe/plan: the cycle's manifest read, observation and planning;
- apply: the restart (stop the old process, start the new one, startup probe until /health answers 200);
- reobserve: the observation written back after the apply;
- step: the restart action's own duration as the executor reports it (inside apply);
- backend start: the fake server alone, from exec until its port accepts (a Python interpreter start), measured
  apart: the floor of every restart;
- total: from the save until the daemon reports the new replica running.

Targets: p50 <= 250 ms, p99 <= 1 s. Run: ``.venv/bin/python bench/converge.py [--edits 50]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from fleetd.controlling.reconciling import CycleResult
from fleetd.daemon.serve import Daemon, ServeOptions

FAKE_BACKEND = Path(__file__).resolve().parent.parent / "tests" / "fakes" / "fake_backend.py"


def manifest(executable: Path, token: str, ctx: int, health_interval: str) -> str:
    return (
        "version: 1\n"
        f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
        "instances:\n"
        "  chat:\n"
        "    backend: fake\n"
        f"    model: /models/{token}.gguf\n"
        "    vram: 64MiB\n"
        f"    options: {{ctx_size: {ctx}}}\n"
        f"    health: {{interval: {health_interval}, timeout: 1s, startup_timeout: 30s}}\n"
    )


def running_hash(daemon: Daemon) -> str | None:
    for replica in daemon.status()["replicas"]:
        if replica["instance"] == "chat" and replica["state"] == "running":
            return str(replica["config_hash"])
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--health-interval", default="100ms")
    args = parser.parse_args()
    token = f"converge-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        executable = root / "fake-llama-server"
        executable.write_text(
            f'#!/bin/sh\nFAKE_BACKEND_KIND=llama exec "{sys.executable}" "{FAKE_BACKEND}" "$@"\n'
        )
        executable.chmod(0o755)
        path = root / "fleet.yaml"
        path.write_text(manifest(executable, token, 1024, args.health_interval))
        options = ServeOptions(
            paths=(path,), interval_s=60, http=None, stop_on_exit=True, state_dir=root / "state"
        )
        daemon = Daemon(options)  # logs nothing: no handler is configured for the fleetd loggers here
        daemon.start()
        try:
            rows = run(daemon, path, executable, token, args)
        finally:
            daemon.stop()
        for process in psutil.process_iter(["cmdline"]):
            if any(token in part for part in process.info["cmdline"] or ()):
                process.kill()
    report(rows)
    print(f"backend start alone (exec -> listening), median of 10: {backend_start_ms():.0f} ms")


def backend_start_ms() -> float:
    times = []
    for _ in range(10):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        started = time.monotonic()
        argv = [
            sys.executable,
            str(FAKE_BACKEND),
            "--model",
            "/m/x.gguf",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        process = subprocess.Popen(
            argv, env={**os.environ, "FAKE_BACKEND_KIND": "llama"}, stderr=subprocess.DEVNULL
        )
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.002)
            times.append((time.monotonic() - started) * 1000)
        finally:
            process.terminate()
            process.wait()
    return statistics.median(times)


def run(
    daemon: Daemon, path: Path, executable: Path, token: str, args: argparse.Namespace
) -> list[dict[str, float]]:
    deadline = time.monotonic() + 30
    while running_hash(daemon) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the first replica never came up")
        time.sleep(0.005)
    rows = []
    for edit in range(args.edits):
        before = running_hash(daemon)
        time.sleep(0.05)  # let the previous cycle's re-observation settle; not part of the figure
        saved = time.monotonic()
        path.write_text(manifest(executable, token, 2048 if edit % 2 == 0 else 1024, args.health_interval))
        while (current := running_hash(daemon)) is None or current == before:
            if time.monotonic() - saved > 30:
                raise SystemExit(f"edit {edit} did not converge")
            time.sleep(0.002)
        total = time.monotonic() - saved
        result = daemon.last_applying_cycle
        assert result is not None and daemon.watcher is not None
        rows.append(row(result, total, (daemon.watcher.last_change_at or saved) - saved))
    return rows


def row(result: CycleResult, total: float, watch: float) -> dict[str, float]:
    t = result.timings
    return {
        "total": total,
        "watch": watch,
        "load": t.load_s,
        "observe": t.observe_s,
        "plan": t.plan_s,
        "apply": t.apply_s,
        "reobserve": t.reobserve_s,
        "step": max((o.duration_ms for o in result.report.outcomes), default=0) / 1000 if result.report else 0.0,
    }


def report(rows: list[dict[str, float]]) -> None:
    print(f"manifest save -> replica healthy, {len(rows)} edits (each restarts the replica)")
    print(f"{'phase':<10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for key in rows[0]:
        values = [r[key] * 1000 for r in rows]
        print(
            f"{key:<10} {percentile(values, 0.5):8.1f} {percentile(values, 0.99):8.1f} {statistics.mean(values):8.1f}"
        )
    totals = [r["total"] * 1000 for r in rows]
    p50, p99 = percentile(totals, 0.5), percentile(totals, 0.99)
    print(f"target p50 <= 250 ms: {'met' if p50 <= 250 else 'MISSED'} ({p50:.0f} ms)")
    print(f"target p99 <= 1000 ms: {'met' if p99 <= 1000 else 'MISSED'} ({p99:.0f} ms)")


if __name__ == "__main__":
    main()
