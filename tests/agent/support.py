"""Helpers for agent tests: waiting on a condition with a deadline, manifests for the fake and the real
backend, and the processes a test must not leave behind."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

from fleetd.agent.local import LocalAgent
from fleetd.core.desired import DesiredState
from fleetd.manifest.loading import load_manifest_text

T = TypeVar("T")
FAKE_BACKEND = Path(__file__).resolve().parent.parent / "fakes" / "fake_backend.py"


def wait_for(condition: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy; fail the test naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)  # polling interval of a condition wait, not synchronisation


def fake_backend_executable(directory: Path) -> Path:
    """A ``vllm``-like executable that runs the fake backend server with this interpreter."""
    path = directory / "fake-vllm"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_BACKEND}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_manifest(executable: Path, *, instances: str) -> DesiredState:
    """A manifest whose ``fake`` backend (type vllm) is the fake server, installed as a binary."""
    text = (
        "version: 1\n"
        "backends:\n"
        f"  fake: {{type: vllm, install: {{binary: {executable}}}}}\n"
        "instances:\n" + instances
    )
    loaded = load_manifest_text(text)
    assert loaded.desired is not None, [d.message for d in loaded.errors]
    return loaded.desired


def processes_with(argument: str) -> list[psutil.Process]:
    """Live processes whose command line contains ``argument`` (zombies excluded)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(argument in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def kill_all(argument: str) -> None:
    for process in processes_with(argument):
        try:
            os.killpg(process.pid, 9)
        except OSError:
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def squatting(address: str, *, timeout_s: float = 10.0) -> Iterator[None]:
    """Listen on ``HOST:PORT`` as another program would, as soon as it is free (a dead replica's port), until the
    block ends. Binds as a server does (``SO_REUSEADDR``: the dead replica's connections may be in TIME_WAIT)."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def bound() -> bool:
            try:
                squatter.bind((host, int(port)))
            except OSError:
                return False
            return True

        wait_for(bound, timeout_s=timeout_s, what=f"{address} to be free")
        squatter.listen()
        yield


def marked(prefix: str) -> Iterator[str]:
    """A unique word for one test's replicas (in their model or command line); whatever carries it is killed
    afterwards. For a fixture: ``yield from marked("adopt")``."""
    value = f"{prefix}-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        kill_all(value)


def started_agent(state: Path) -> LocalAgent:
    """A started ``LocalAgent`` (node-1) on ``state``. Its ports come from the default range: the machine-wide
    port reservations keep test runs side by side from sharing one."""
    agent = LocalAgent("node-1", state, stable_after_s=2.0)
    agent.start()
    return agent
