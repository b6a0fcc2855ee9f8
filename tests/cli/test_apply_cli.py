"""``fleetd apply`` as an operator runs it: the real CLI in a subprocess, the embedded registry under
``$FLEETD_STATE_DIR``, and replicas that are the fake backend server (a ``llama_cpp`` backend whose binary is
``tests/fakes/fake_backend.py``: the type that runs on a node without a GPU, like this machine).

Every test stops the replicas it started, through the embedded agent (which adopts them) and then by the test's
unique model name, so no backend process outlives it.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetd.controlling import leadership as locking
from fleetd.controlling.embedded import open_embedded
from fleetd.registry import leases
from fleetd.registry.facade import open_registry
from tests.agent.support import fake_backend_executable, kill_all, processes_with, wait_for

HEALTH = "{interval: 100ms, timeout: 500ms, startup_timeout: 20s, failure_threshold: 2}"


@dataclass(frozen=True)
class Fleet:
    """A working directory with a ``fleet.yaml``, a state dir, and a model path no other test uses (its files
    under the working directory)."""

    root: Path
    state: Path
    model: str

    @property
    def manifest(self) -> Path:
        return self.root / "fleet.yaml"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.state / 'fleetd.db'}"

    def write(self, instances: str) -> None:
        executable = fake_backend_executable(self.root)
        self.manifest.write_text(
            "version: 1\n"
            "backends:\n"
            f"  fake: {{type: llama_cpp, install: {{binary: {executable}}}}}\n"
            "instances:\n" + instances
        )

    def instance(self, name: str = "chat", *, extra: str = "", vram: str = "1GiB", present: bool = True) -> str:
        """The instance's YAML; its model file (empty: the fake backend reads none) is made unless not
        ``present`` (fleetd places a replica only where its model file is)."""
        model = Path(f"{self.model}-{name}.gguf")
        if present:
            model.parent.mkdir(parents=True, exist_ok=True)
            model.touch()
        return (
            f"  {name}:\n"
            "    backend: fake\n"
            f"    model: {self.model}-{name}.gguf\n"
            f"    vram: {vram}\n"
            "    restart_delay: 100ms\n"
            "    restart_max_delay: 400ms\n"
            f"    health: {HEALTH}\n" + extra
        )

    def run(self, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        """``fleetd ARGS`` in the fleet's directory, stdin not a terminal unless said otherwise."""
        env = {k: v for k, v in os.environ.items() if k != "FLEETD_DATABASE_URL"}
        env["FLEETD_STATE_DIR"] = str(self.state)
        return subprocess.run(
            [sys.executable, "-m", "fleetd", *args],
            cwd=self.root,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )

    def status_json(self, *args: str) -> dict[str, Any]:
        result = self.run("status", "--format", "json", *args)
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def processes(self) -> int:
        return len(processes_with(self.model))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    root = tmp_path / "fleet"
    root.mkdir()
    made = Fleet(root, tmp_path / "state", str(root / "models" / uuid.uuid4().hex))
    made.write(made.instance())
    try:
        yield made
    finally:
        try:
            if made.state.exists():
                open_embedded(made.state).close(stop_replicas=True)
        finally:
            kill_all(made.model)


def models_endpoint(address: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{address}/v1/models", timeout=5) as response:
        assert response.status == 200
        document: dict[str, Any] = json.loads(response.read())
        return document


def test_apply_starts_the_replica_and_a_second_apply_has_nothing_to_do(fleet: Fleet) -> None:
    first = fleet.run("apply", "--auto-approve")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "+ load chat on local (replica 0)" in first.stdout
    assert "✓ load:chat:local:0" in first.stdout
    assert "The fleet matches the manifest and is healthy." in first.stdout
    (replica,) = fleet.status_json()["replicas"]
    assert (replica["instance"], replica["state"]) == ("chat", "running")
    models = models_endpoint(replica["address"])
    assert models["data"], models
    second = fleet.run("apply", "--auto-approve")
    assert (second.returncode, second.stdout) == (0, "No changes. The fleet matches the manifest.\n"), (
        second.stderr
    )
    assert fleet.processes() == 1, "the second apply started nothing"


def test_without_a_terminal_apply_refuses_unless_auto_approved(fleet: Fleet) -> None:
    result = fleet.run("apply")
    assert result.returncode == 1
    assert "+ load chat on local (replica 0)" in result.stdout, "the plan is shown"
    assert "refusing to apply without confirmation: pass --auto-approve" in result.stderr
    assert fleet.processes() == 0
    assert fleet.status_json()["replicas"] == []


def test_a_saved_plan_is_applied_exactly(fleet: Fleet) -> None:
    assert fleet.run("status").returncode == 0  # registers the local node, as an operator's first command would
    saved = fleet.run("plan", "--out", "p.json")
    assert saved.returncode == 2, saved.stderr
    plan = json.loads((fleet.root / "p.json").read_text())
    assert [a["id"] for a in plan["actions"]] == ["install_backend:local:fake", "load:chat:local:0"]
    applied = fleet.run("apply", "p.json", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "✓ install_backend:local:fake" in applied.stdout
    assert "✓ load:chat:local:0" in applied.stdout
    # the install's progress shows while it runs, before its outcome line
    progress = applied.stdout.index("    fake check: checking ")
    assert progress < applied.stdout.index("    fake done: installed ") < applied.stdout.index("✓ install_backend")
    assert [r["state"] for r in fleet.status_json()["replicas"]] == ["running"]
    again = fleet.run("apply", "p.json", "--auto-approve")
    assert again.returncode == 1, "a plan is applied once: the fleet it was made on has changed"
    assert "the fleet changed since the plan was made: plan again" in again.stderr
    assert fleet.processes() == 1


def test_a_plan_on_a_fresh_machine_places_on_this_machine_and_can_be_applied(fleet: Fleet) -> None:
    """Without a ``nodes`` section this machine is the node: the first ``plan`` places on it (reading its facts,
    registering nothing), and the saved plan still matches the fleet once ``apply`` registers the node."""
    saved = fleet.run("plan", "--out", "p.json")
    assert saved.returncode == 2, saved.stdout + saved.stderr
    plan = json.loads((fleet.root / "p.json").read_text())
    assert [a["id"] for a in plan["actions"]] == ["install_backend:local:fake", "load:chat:local:0"]
    assert "unschedulable" not in saved.stdout.lower()
    registry = open_registry(fleet.database_url)
    try:
        assert registry.snapshot().nodes == (), "plan wrote the node into the registry"
    finally:
        registry.engine.dispose()
    applied = fleet.run("apply", "p.json", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert [r["state"] for r in fleet.status_json()["replicas"]] == ["running"]


def test_a_saved_plan_is_refused_when_the_manifest_changed(fleet: Fleet) -> None:
    assert fleet.run("status").returncode == 0
    assert fleet.run("plan", "--out", "p.json").returncode == 2
    fleet.write(fleet.instance(extra="    options: {ctx_size: 4096}\n"))
    result = fleet.run("apply", "p.json", "--auto-approve")
    assert result.returncode == 1
    assert "the manifest changed since the plan was made" in result.stderr
    assert fleet.processes() == 0


def test_a_saved_plan_cannot_be_narrowed_with_target(fleet: Fleet) -> None:
    assert fleet.run("plan", "--out", "p.json").returncode in (0, 2)
    result = fleet.run("apply", "p.json", "--auto-approve", "--target", "chat")
    assert result.returncode == 1
    assert "--target cannot narrow a saved plan" in result.stderr


def test_apply_waits_for_the_controller_lease_and_names_its_holder(fleet: Fleet) -> None:
    registry = open_registry(fleet.database_url)
    holder = "apply:ci-runner-7:4711"  # another `fleetd apply`, as its holder id records it
    try:
        epoch = registry.acquire_lease("controller", holder, ttl_ms=120_000)
        assert epoch is not None
        blocked = fleet.run("apply", "--auto-approve", "--lock-timeout", "1s")
        assert blocked.returncode == 1
        who = f"fleetd apply (pid 4711 on ci-runner-7, lease epoch {epoch})"
        assert blocked.stderr.startswith(f"Waiting up to 1 s for the controller lease, held by {who}...\n")
        last = blocked.stderr.splitlines()[-1]
        assert last.startswith(f"error: {who} holds the controller lease and is applying; the lease runs out in ")
        assert last.endswith(
            " s unless it is renewed; try again when it is done, or wait longer with --lock-timeout"
        )
        assert fleet.processes() == 0
        assert registry.release_lease("controller", holder, epoch)
        applied = fleet.run("apply", "--auto-approve", "--lock-timeout", "1s")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert registry.acquire_lease("controller", "next-holder", ttl_ms=1_000) is not None, (
            "apply released its lease when it finished"
        )
    finally:
        registry.engine.dispose()


def test_apply_while_a_serve_leads_stops_at_once_and_says_how_to_proceed(fleet: Fleet) -> None:
    """A ``serve`` keeps the lease while it runs: waiting for it is pointless, and it is not "applying"."""
    registry = open_registry(fleet.database_url)
    try:
        epoch = registry.acquire_lease("controller", "serve:gpu-box:1234", ttl_ms=120_000)
        assert epoch is not None
        started = time.monotonic()
        blocked = fleet.run("apply", "--auto-approve", "--lock-timeout", "5m")
        assert time.monotonic() - started < 60, "apply waited for a serve's lease"
        assert (blocked.returncode, blocked.stdout) == (1, "")
        assert blocked.stderr == (
            f"error: fleetd serve (pid 1234 on gpu-box, lease epoch {epoch}) leads this fleet and applies the "
            "manifest itself: commit or edit the manifest it watches, or stop it to apply by hand\n"
        )
        assert fleet.processes() == 0
        assert registry.release_lease("controller", "serve:gpu-box:1234", epoch)
    finally:
        registry.engine.dispose()


def test_a_lease_holder_is_named_as_its_id_records_it() -> None:
    assert locking.describe_holder("serve:host-a:1234", 7) == "fleetd serve (pid 1234 on host-a, lease epoch 7)"
    assert locking.describe_holder("replica-restart:gpu.lan:9") == "fleetd replica-restart (pid 9 on gpu.lan)"
    assert locking.describe_holder("ci-job-4711", 3) == "ci-job-4711 (lease epoch 3)"
    assert locking.describe_holder("serve:no-pid") == "serve:no-pid"
    status = str(locking.LockBusy("controller", "status:gpu-box:77", 9_500, 4))
    assert status == (
        "fleetd status (pid 77 on gpu-box, lease epoch 4) holds the controller lease and is reading the fleet's "
        "status; the lease runs out in 10 s unless it is renewed"
    )
    assert "is applying" not in str(locking.LockBusy("controller", "serve:gpu-box:1", 30_000, 2))


def test_target_applies_only_that_instance(fleet: Fleet) -> None:
    fleet.write(fleet.instance("alpha") + fleet.instance("beta"))
    result = fleet.run("apply", "--auto-approve", "--target", "alpha")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✓ install_backend:local:fake" in result.stdout, "the node action it depends on comes along"
    assert "load:beta" not in result.stdout
    assert [r["instance"] for r in fleet.status_json()["replicas"]] == ["alpha"]
    unknown = fleet.run("apply", "--auto-approve", "--target", "gamma")
    assert unknown.returncode == 1
    assert "no instance named 'gamma'" in unknown.stderr


def test_an_unschedulable_replica_makes_apply_exit_3(fleet: Fleet) -> None:
    fleet.write(fleet.instance("small") + fleet.instance("huge", vram="900TiB"))
    result = fleet.run("apply", "--auto-approve")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "✓ load:small:local:0" in result.stdout
    assert "huge: 1 replica not placed" in result.stdout
    wait_for(lambda: fleet.processes() == 1, timeout_s=10, what="the small replica only")


def test_plan_and_apply_name_a_model_file_missing_on_this_machine(fleet: Fleet) -> None:
    """Checks before runtime: the local node's agent looks for the model file before a replica is placed."""
    fleet.write(fleet.instance() + fleet.instance("ghost", present=False))
    planned = fleet.run("plan")
    assert planned.returncode == 2, planned.stdout + planned.stderr
    lines = planned.stdout.splitlines()
    assert "  + load chat on local (replica 0): scale_up, vram 1GiB" in lines
    assert "  ghost: 1 replica not placed — 1 node: model file not found there" in lines
    assert f"  ghost: model {fleet.model}-ghost.gguf not found on node local" in lines
    applied = fleet.run("apply", "--auto-approve")
    assert applied.returncode == 3, applied.stdout + applied.stderr
    assert "✓ load:chat:local:0" in applied.stdout and "load:ghost" not in applied.stdout
    assert f"ghost: model {fleet.model}-ghost.gguf not found on node local" in applied.stdout
    wait_for(lambda: fleet.processes() == 1, timeout_s=10, what="the chat replica only")
    fleet.instance("ghost")  # the file arrives: the next plan places the replica
    again = fleet.run("plan")
    assert "  + load ghost on local (replica 0): scale_up, vram 1GiB" in again.stdout.splitlines(), again.stdout


def test_on_a_terminal_apply_asks_and_a_no_changes_nothing(fleet: Fleet) -> None:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"n\n")  # typed ahead: the terminal buffers it until fleetd reads the answer
        result = fleet.run("apply", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 1
    assert "Apply these 2 actions? [y/N]" in result.stdout
    assert "apply cancelled; nothing was changed" in result.stderr
    assert fleet.processes() == 0


def test_the_controller_lease_is_renewed_while_held_and_released_after(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite:///{tmp_path / 'fleetd.db'}")

    def expires() -> int:
        with registry.engine.connect() as conn:
            info = leases.current(conn, locking.CONTROLLER_LEASE)
        assert info is not None
        return info.expires_ms

    try:
        held = locking.acquire(registry, "apply:first", timeout_s=0, ttl_ms=600)
        first = expires()
        with locking.renewed(registry, held):
            with pytest.raises(
                locking.LockBusy, match=r"^apply:first \(lease epoch \d+\) holds the controller lease;"
            ):
                locking.acquire(registry, "apply:second", timeout_s=0)
            wait_for(lambda: expires() > first, timeout_s=10, what="a renewal")
            assert not held.lost.is_set()
        assert expires() == 0, "released"
        assert locking.acquire(registry, "apply:second", timeout_s=0).fence.epoch == held.fence.epoch + 1
    finally:
        registry.engine.dispose()
