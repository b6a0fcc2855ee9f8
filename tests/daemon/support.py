"""Helpers for the daemon's tests: a fake llama-server executable, manifests, and ``fleetd serve`` run as a
subprocess with its HTTP endpoints read as an operator would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.agent.support import FAKE_BACKEND

HEALTH = "{interval: 100ms, timeout: 300ms, startup_timeout: 20s, failure_threshold: 2}"


def fake_llama_executable(directory: Path) -> Path:
    """A ``llama-server``-like executable (the fake backend): llama.cpp runs on CPU-only nodes, vLLM does not."""
    path = directory / "fake-llama-server"
    path.write_text(f'#!/bin/sh\nFAKE_BACKEND_KIND=llama exec "{sys.executable}" "{FAKE_BACKEND}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def model_file(path: Path) -> Path:
    """``path``, made an empty file unless it exists: the fake backend reads no model, but fleetd places a
    replica only on a node where its model file is."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return path


def instance(name: str, token: str, *, models: Path, ctx: int = 1024) -> str:
    """An instance whose model path carries ``token`` (to find and kill its processes): ``{token}-{name}.gguf``
    in ``models``, an empty file made there unless it exists (real model files for a real llama-server)."""
    return (
        f"  {name}:\n"
        "    backend: fake\n"
        f"    model: {model_file(models / f'{token}-{name}.gguf')}\n"
        "    vram: 64MiB\n"
        f"    options: {{ctx_size: {ctx}}}\n"
        "    restart_delay: 100ms\n"
        "    restart_max_delay: 400ms\n"
        f"    health: {HEALTH}\n"
    )


def manifest_text(executable: Path, *instances: str) -> str:
    body = "".join(instances) if instances else "  {}\n"
    return (
        "version: 1\n"
        "backends:\n"
        f"  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
        "instances:\n" + body
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``fleetd serve`` in a subprocess, its stderr in a file, its HTTP endpoints on a free port."""

    def __init__(self, manifest: Path, state_dir: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "FLEETD_STATE_DIR": str(state_dir)}
        env.pop("NOTIFY_SOCKET", None)
        argv = [sys.executable, "-m", "fleetd", "serve", str(manifest), "--interval", "1s"]
        argv += ["--http", f"127.0.0.1:{self.port}", *extra]
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, bytes] | None:
        """The status and body of ``GET path``, or ``None`` while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read()
        except OSError:
            return None

    def status(self) -> dict[str, Any] | None:
        got = self.get("/status")
        return json.loads(got[1]) if got is not None and got[0] == 200 else None

    def metric(self, name: str) -> float | None:
        got = self.get("/metrics")
        if got is None:
            return None
        for line in got[1].decode().splitlines():
            if line.startswith((f"{name} ", f"{name}{{")):
                return float(line.rsplit(" ", 1)[1])
        return None

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Running replicas by instance name (replica 0), from ``/status``."""
        status = self.status() or {}
        return {r["instance"]: r for r in status.get("replicas", []) if r["state"] == "running"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        """Make sure it is gone (teardown): SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.process.kill()


def fleetd_cli(state: Path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``fleetd ARGS`` as an operator on the controller's host runs it (its state dir, its registry)."""
    env = {**os.environ, "FLEETD_STATE_DIR": str(state)}
    if database_url is not None:
        env["FLEETD_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )


def node_table(state: Path, *, database_url: str | None = None) -> dict[str, dict[str, Any]]:
    """``fleetd node list`` by node name."""
    shown = fleetd_cli(state, "node", "list", "--format", "json", database_url=database_url)
    assert shown.returncode == 0, shown.stderr
    return {n["name"]: n for n in json.loads(shown.stdout)["nodes"]}


def one_instance_fleet(directory: Path, mark: str, *, replicas: int, extra: str = "") -> Path:
    """A manifest with no nodes (they join over the bus) and one instance ``chat`` of the fake backend, its
    model path carrying ``mark`` (to find its processes); ``extra`` adds fields to the instance."""
    manifest = directory / "fleet.yaml"
    manifest.write_text(
        "version: 1\n"
        f"backends:\n  fake: {{type: llama_cpp, install: {{binary: {fake_llama_executable(directory)}}}}}\n"
        "instances:\n"
        f"  chat: {{backend: fake, model: {model_file(directory / 'models' / f'{mark}.gguf')}, vram: 1GiB,"
        f" scheduling: {{min_replicas: {replicas}}},"
        f"{extra} health: {{interval: 100ms, timeout: 1s, startup_timeout: 30s, failure_threshold: 3}}}}\n"
    )
    return manifest
