"""Print this machine's node facts as the agent would report them, as JSON (run it on a GPU machine to check
the NVML reading against ``nvidia-smi``).

Usage: ``python scripts/gpu_check.py [NODE_NAME]``. When NVML is installed but gives no GPU, the reason
(NVML's error) goes to stderr, so a fallback to ``gpu_vendor: none`` is never silent.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys

from fleetd.agent.node_facts import load_nvml, read_gpus, read_node_facts


def nvml_problem() -> str | None:
    """Why NVML gives no GPU, or ``None`` when it does."""
    nvml = load_nvml()
    if nvml is None:
        return "pynvml (nvidia-ml-py) is not installed"
    try:
        gpus = read_gpus(nvml)
    except nvml.NVMLError as error:
        return f"NVML: {error}"
    return None if gpus else "NVML sees no device"


def main(argv: list[str]) -> int:
    report = read_node_facts(argv[1] if len(argv) > 1 else socket.gethostname())
    sys.stdout.write(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    if report.gpu_vendor != "nvidia":
        problem = nvml_problem()
        if problem is not None:
            sys.stderr.write(f"no NVIDIA GPU read: {problem}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
