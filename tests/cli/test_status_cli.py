"""``fleetd status``: nodes and replicas, sync and health against the manifest, its git revision, and the JSON
snapshot that ``fleetd plan --observed`` reads back. The real CLI in a subprocess, on the fake backend."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetd.registry.facade import open_registry
from tests.cli.test_apply_cli import Fleet, fleet

__all__ = ["fleet"]  # the fixture, shared with the apply tests


def test_status_is_synced_and_healthy_after_apply_and_out_of_sync_after_an_edit(fleet: Fleet) -> None:
    applied = fleet.run("apply", "--auto-approve")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = fleet.run("status")
    assert status.returncode == 0, status.stderr
    assert "Sync:     Synced\n" in status.stdout
    assert "Health:   Healthy\n" in status.stdout
    (row,) = [line.split() for line in status.stdout.splitlines() if line.strip().startswith("chat ")]
    assert row[:4] == ["chat", "local", "0", "running"]
    assert row[4].startswith("127.0.0.1:")
    fleet.write(fleet.instance(extra="    options: {ctx_size: 4096}\n"))
    edited = fleet.run("status")
    assert edited.returncode == 0
    assert "Sync:     OutOfSync (1 action pending)\n" in edited.stdout
    assert "Health:   Healthy\n" in edited.stdout


def test_status_reads_the_registry_while_another_controller_holds_the_lease(fleet: Fleet) -> None:
    """A running ``fleetd serve`` supervises the replicas; status must not open a second agent beside it."""
    assert fleet.run("apply", "--auto-approve").returncode == 0
    fleet.state.joinpath("fleetd.db").unlink()  # a fresh registry: only an agent would register the node again
    registry = open_registry(fleet.database_url)
    try:
        epoch = registry.acquire_lease("controller", "serve:gpu-box:4242", ttl_ms=120_000)
        assert epoch is not None
        held = fleet.run("status")
        assert held.returncode == 0, held.stderr
        assert "note: serve:gpu-box:4242 holds the controller lease; showing the fleet as it last recorded" in (
            held.stderr
        )
        assert registry.snapshot().nodes == (), "status opened an agent (it registered the node)"
        assert registry.release_lease("controller", "serve:gpu-box:4242", epoch)
        free = fleet.run("status")
        assert free.returncode == 0, free.stderr
        assert "note:" not in free.stderr
        assert [n.name for n in registry.snapshot().nodes] == ["local"]
        (row,) = [line.split() for line in free.stdout.splitlines() if line.strip().startswith("chat ")]
        assert row[:4] == ["chat", "local", "0", "running"], "the agent adopted the running replica"
    finally:
        registry.engine.dispose()


def test_status_without_a_manifest_shows_the_fleet_only(fleet: Fleet) -> None:
    fleet.manifest.unlink()
    result = fleet.run("status")
    assert result.returncode == 0, result.stderr
    assert "local  healthy" in result.stdout
    assert "Replicas:\n  (none)\n" in result.stdout
    assert "Sync:" not in result.stdout
    document = fleet.status_json()
    assert document["status"]["sync"] is None
    assert document["status"]["health"] == "Healthy"


def test_status_json_reports_sync_health_and_an_unschedulable_replica(fleet: Fleet) -> None:
    fleet.write(fleet.instance(vram="900TiB"))
    status = fleet.status_json()["status"]
    assert status["sync"] == "Synced", "nothing can be done, so a plan is empty"
    assert status["unschedulable_replicas"] == 1
    assert status["unschedulable"] == ["chat: 1 replica not placed — 1 node: insufficient VRAM"]
    assert status["health"] == "Degraded"
    assert status["manifest"] == ["fleet.yaml"]


def test_the_snapshot_round_trips_through_plan_observed(fleet: Fleet) -> None:
    assert fleet.run("apply", "--auto-approve").returncode == 0
    document = fleet.status_json()
    del document["status"]
    snapshot = fleet.root / "snapshot.json"
    snapshot.write_text(json.dumps(document))
    planned = fleet.run("plan", "--observed", str(snapshot))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    fleet.write(fleet.instance(extra="    options: {ctx_size: 4096}\n"))
    changed = fleet.run("plan", "--observed", str(snapshot))
    assert changed.returncode == 2, changed.stderr
    assert "~ restart chat on local (replica 0)" in changed.stdout


def test_the_whole_status_document_is_read_by_plan_observed(fleet: Fleet) -> None:
    result = fleet.run("status", "--format", "json")
    assert result.returncode == 0
    snapshot = fleet.root / "status.json"
    snapshot.write_text(result.stdout)
    planned = fleet.run("plan", "--observed", str(snapshot))
    assert planned.returncode == 2, planned.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_status_records_the_manifests_git_revision(fleet: Fleet) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(fleet.root), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()

    git("init", "-q")
    git("add", "fleet.yaml", "fake-vllm")
    git("commit", "-q", "-m", "fleet")
    head = git("rev-parse", "HEAD")
    clean = fleet.status_json()["status"]["revision"]
    assert clean == {"commit": head, "dirty": False}
    text = fleet.run("status").stdout
    assert f"Manifest: fleet.yaml at {head[:12]}\n" in text
    fleet.write(fleet.instance(extra="    options: {ctx_size: 4096}\n"))
    assert fleet.status_json()["status"]["revision"] == {"commit": head, "dirty": True}
    assert f"at {head[:12]} (dirty)" in fleet.run("status").stdout


def test_a_directory_outside_git_has_no_revision(fleet: Fleet, tmp_path: Path) -> None:
    git = shutil.which("git")
    if (
        git
        and subprocess.run([git, "-C", str(tmp_path), "rev-parse"], capture_output=True, check=False).returncode
        == 0
    ):
        pytest.skip("the test directory is inside a git checkout")
    assert fleet.status_json()["status"]["revision"] is None
    assert "(not in a git checkout)" in fleet.run("status").stdout


def test_the_text_names_a_node_whose_agent_did_not_answer() -> None:
    from fleetd.cli.status_command import render_status_text
    from fleetd.controlling.status import FleetStatus, Health
    from fleetd.core.observed import NodeStatus, ObservedNode, ObservedState

    error = "node gpu-b (10.0.0.6:7443): health got no answer within 5 s; the agent may be hung or overloaded"
    observed = ObservedState(
        nodes=(
            ObservedNode("gpu-a", NodeStatus.HEALTHY, approved=True),
            ObservedNode("gpu-b", NodeStatus.UNHEALTHY, approved=True, last_error=error),
        )
    )
    text = render_status_text(observed, FleetStatus(Health.HEALTHY))
    assert f"  gpu-b: {error}" in text
    assert "gpu-a:" not in text
