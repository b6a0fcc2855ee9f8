"""``fleetd serve`` says what happened and why: a replica SIGKILLed, a restart whose port was taken, a replica
that gives up, an instance that cannot be placed, a model file that is not there. Each shows as a log line (logfmt or JSON) and in ``/status``."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.support import kill_all, squatting, wait_for
from tests.daemon.support import HEALTH, Served, fake_llama_executable, manifest_text


@pytest.fixture
def token() -> Iterator[str]:
    mark = f"events{os.getpid()}x{os.urandom(3).hex()}"
    yield mark
    kill_all(mark)


def fake(name: str, token: str, models: Path, *, extra: str = "", vram: str = "64MiB", exists: bool = True) -> str:
    """An instance of the fake backend; its model file is made in ``models`` unless not ``exists``."""
    model = models / f"{token}-{name}.gguf"
    if exists:
        model.parent.mkdir(exist_ok=True)
        model.write_bytes(b"")
    return (
        f"  {name}:\n"
        "    backend: fake\n"
        f"    model: {model}\n"
        f"    vram: {vram}\n"
        "    restart_delay: 1500ms\n"
        "    restart_max_delay: 3s\n"
        f"    health: {HEALTH}\n" + extra
    )


def lines(served: Served) -> list[dict[str, Any]]:
    """The JSON log lines so far (``--log-format json``); a line being written is skipped."""
    found = []
    for text in served.output().splitlines():
        try:
            found.append(json.loads(text))
        except ValueError:
            continue
    return found


def said(served: Served, **fields: Any) -> dict[str, Any] | None:
    """The first log line carrying all ``fields``."""
    return next((line for line in lines(served) if all(line.get(k) == v for k, v in fields.items())), None)


def replica(served: Served, instance: str) -> dict[str, Any] | None:
    return next((r for r in (served.status() or {}).get("replicas", []) if r["instance"] == instance), None)


def test_serve_says_what_happened_and_why(tmp_path: Path, token: str) -> None:
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    models = tmp_path / "models"
    crashing = "    max_restarts: 1\n    environment: {FAKE_BACKEND_CRASH_AFTER_MS: '300'}\n"
    manifest.write_text(
        manifest_text(
            executable,
            fake("alpha", token, models),
            fake("crashy", token, models, extra=crashing),
            fake("big", token, models, vram="4096GiB"),
            fake("ghost", token, models, exists=False),
        )
    )
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log", "--log-format", "json")
    try:
        first = wait_for(
            lambda: (r := replica(served, "alpha")) and r["state"] == "running" and r,
            timeout_s=30,
            what="alpha running\n" + served.output(),
        )
        assert first["node"] == "local" and first["pid"]
        wait_for(
            lambda: said(served, event="replica_ready", replica="alpha/0", address=first["address"]),
            timeout_s=10,
            what="alpha's ready line\n" + served.output(),
        )
        # Every line is one JSON object with the time, the level, who speaks and the message.
        assert all({"ts", "level", "src", "msg"} <= set(line) for line in lines(served))

        # An unplaceable instance: its reasons in the log and in /status, still there once the cooldown starts.
        unplaced = wait_for(
            lambda: said(served, event="unschedulable", instance="big"), timeout_s=10, what="big unschedulable"
        )
        assert unplaced["level"] == "warning"
        assert unplaced["msg"] == "unschedulable: big: 1 replica not placed — 1 node: insufficient VRAM"

        def cooling() -> dict[str, Any] | None:
            plan = (served.status() or {}).get("last_plan") or {}
            return next((u for u in plan.get("unschedulable", []) if "cooldown" in u["line"]), None)

        cooled = wait_for(cooling, timeout_s=20, what="big's cooldown\n" + served.output())
        assert {"reason": "insufficient_vram", "nodes": 1, "words": "insufficient VRAM"} in cooled["reasons"]

        # A model file missing on the node that would load it: asked of the node before anything starts.
        ghost = wait_for(
            lambda: said(served, event="unschedulable", instance="ghost"), timeout_s=10, what="ghost unschedulable"
        )
        assert ghost["msg"] == "unschedulable: ghost: 1 replica not placed — 1 node: model file not found there"
        plan = (served.status() or {})["last_plan"]
        (entry,) = (u for u in plan["unschedulable"] if u["instance"] == "ghost")
        assert {"reason": "model_missing", "nodes": 1, "words": "model file not found there"} in entry["reasons"]
        note = said(
            served,
            event="plan_note",
            msg=f"note: ghost: model {models}/{token}-ghost.gguf not found on node local",
        )
        assert note is not None and note["level"] == "warning"

        # A replica that crashes past max_restarts: failed, with why, in the log and in /status.
        gave_up = wait_for(lambda: _failed(served), timeout_s=30, what="crashy to give up\n" + served.output())
        assert "exited with status 1; gave up after 1 restarts" in gave_up["msg"]
        failed = wait_for(
            lambda: (r := replica(served, "crashy")) and r["state"] == "failed" and r,
            timeout_s=10,
            what="crashy failed in /status",
        )
        assert failed["last_error"].startswith("exited with status 1; gave up after 1 restarts")
        assert "fake backend: crashing" in failed["last_error"]  # the first line of its log naming the error
        # Failed for restart_max_delay (3 s), with no other node to take it: restarted in place, and said so.
        retried = wait_for(
            lambda: next(
                (
                    x
                    for x in lines(served)
                    if x.get("event") == "action" and x["msg"].startswith("restart crashy/0")
                ),
                None,
            ),
            timeout_s=20,
            what="crashy retried after restart_max_delay\n" + served.output(),
        )
        assert retried["msg"].startswith("restart crashy/0 on local: failed -> ")

        # SIGKILL, and the port taken while the replica is down: it comes back on another port.
        port = first["address"].rsplit(":", 1)[1]
        os.kill(first["pid"], signal.SIGKILL)
        with squatting(first["address"]):
            crash = wait_for(
                lambda: said(
                    served,
                    src="agent.supervisor",
                    level="warning",
                    msg="replica alpha/0 killed by SIGKILL; restart 1 in 1.5 s",
                ),
                timeout_s=10,
                what="the crash line\n" + served.output(),
            )
            assert crash
            moved = wait_for(
                lambda: (
                    (r := replica(served, "alpha"))
                    and r["state"] == "running"
                    and r["address"] != first["address"]
                    and r
                ),
                timeout_s=30,
                what="alpha running on another port\n" + served.output(),
            )
        assert moved["restarts"] == 1 and moved["pid"] != first["pid"]
        assert moved["last_error"] == (
            f"killed by SIGKILL; port {port} is taken by another process; restarting on port "
            f"{moved['address'].rsplit(':', 1)[1]}"
        )
        ready = said(served, event="replica_ready", replica="alpha/0", address=moved["address"])
        assert ready is not None and f"(moved from {first['address']})" in ready["msg"]
    finally:
        served.stop()


def _failed(served: Served) -> dict[str, Any] | None:
    """The supervisor's line for crashy giving up (the embedded agent logs into serve's log)."""
    return next(
        (
            line
            for line in lines(served)
            if line["src"] == "agent.supervisor"
            and line["level"] == "error"
            and line["msg"].startswith("replica crashy/0 failed:")
        ),
        None,
    )
