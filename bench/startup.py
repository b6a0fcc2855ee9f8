"""How long the ``fleetd`` command takes to start: the wall time of quick commands, and what it imports.

    .venv/bin/python bench/startup.py          # about 15 seconds
    .venv/bin/python bench/startup.py --runs 20

Each command runs as a subprocess, as a shell or CI job runs it, RUNS times after one warm-up (so the
bytecode caches exist); the median and best wall times are printed next to the bare interpreter's start-up,
which no change to fleetd can go below. Then the ten imports with the largest cumulative time on the
``fleetd version`` path, from ``python -X importtime`` (one run, so expect some noise in the small ones).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fleet.yaml"
RUNS = 10
TOP = 10
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


@dataclass(frozen=True, slots=True)
class Timing:
    label: str
    median_s: float
    best_s: float


@dataclass(frozen=True, slots=True)
class ImportCost:
    module: str
    self_us: int
    cumulative_us: int
    depth: int


def fleetd_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m fleetd``."""
    script = Path(sys.executable).parent / "fleetd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fleetd"]


def time_command(label: str, argv: list[str], runs: int) -> Timing:
    _run(argv)  # warm-up: bytecode caches, file system caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        _run(argv)
        times.append(time.perf_counter() - start)
    return Timing(label, statistics.median(times), min(times))


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")


def import_costs(args: list[str]) -> list[ImportCost]:
    """``python -X importtime`` of ``args``: every import with its self and cumulative microseconds."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    costs = []
    for line in result.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            self_us, cumulative_us, indent, module = match.groups()
            costs.append(ImportCost(module, int(self_us), int(cumulative_us), len(indent) // 2))
    return costs


def render_timings(rows: list[Timing], baseline: Timing) -> str:
    width = max(len(r.label) for r in [*rows, baseline])
    lines = [
        f"{'command'.ljust(width)}  {'median':>8}  {'best':>8}  {'over bare python':>16}",
        f"{'-' * width}  {'-' * 8}  {'-' * 8}  {'-' * 16}",
    ]
    for row in [baseline, *rows]:
        extra = "" if row is baseline else f"{(row.median_s - baseline.median_s) * 1000:+,.0f} ms"
        lines.append(
            f"{row.label.ljust(width)}  {row.median_s * 1000:>5,.0f} ms  {row.best_s * 1000:>5,.0f} ms  {extra:>16}"
        )
    return "\n".join(lines)


def render_imports(costs: list[ImportCost], top: int) -> str:
    ranked = sorted(costs, key=lambda c: c.cumulative_us, reverse=True)[:top]
    title = "module (indent = import depth)"
    width = max([len(title), *(len(c.module) + 2 * c.depth for c in ranked)])
    lines = [
        f"{title.ljust(width)}  {'cumulative':>10}  {'self':>8}",
        f"{'-' * width}  {'-' * 10}  {'-' * 8}",
    ]
    for cost in ranked:
        name = "  " * cost.depth + cost.module
        lines.append(f"{name.ljust(width)}  {cost.cumulative_us / 1000:>7.1f} ms  {cost.self_us / 1000:>5.1f} ms")
    return "\n".join(lines)


def loaded_modules(args: list[str]) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``fleetd args`` in-process."""
    code = (
        "import sys\n"
        f"sys.argv = ['fleetd', *{args!r}]\n"
        "from fleetd.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    return set(result.stderr.split())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per command (default {RUNS})")
    args = parser.parse_args(argv)

    fleetd = fleetd_command()
    example = str(EXAMPLE.relative_to(ROOT))
    print(
        f"fleetd start-up: wall time of each command as a subprocess, {args.runs} runs after a warm-up; "
        f"python {sys.version.split()[0]} on {os.cpu_count()} CPUs\n",
        flush=True,
    )
    baseline = time_command("python -c pass (bare interpreter)", [sys.executable, "-c", "pass"], args.runs)
    rows = [
        time_command("fleetd --help", [*fleetd, "--help"], args.runs),
        time_command("fleetd version", [*fleetd, "version"], args.runs),
        time_command(f"fleetd validate {example}", [*fleetd, "validate", example], args.runs),
        time_command(
            "python -c 'import fleetd.cli.app'", [sys.executable, "-c", "import fleetd.cli.app"], args.runs
        ),
    ]
    print(render_timings(rows, baseline))

    costs = import_costs(["-m", "fleetd", "version"])
    total = sum(c.self_us for c in costs)
    print(
        f"\nTop {TOP} imports by cumulative time on the `fleetd version` path ({total / 1000:.0f} ms of imports in all):\n"
    )
    print(render_imports(costs, TOP))

    heavy = ("pydantic", "yaml", "rich", "typer", "click", "sqlalchemy", "difflib", "shlex")
    for command in (["--help"], ["version"], ["validate", example]):
        present = sorted(loaded_modules(command) & set(heavy))
        print(
            f"\nfleetd {' '.join(command)} imports: {', '.join(present) or 'none of ' + ', '.join(heavy)}", end=""
        )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
