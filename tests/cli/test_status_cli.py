"""``fleetd status``: nodes and replicas, sync and health against the manifest, its git revision, and the JSON
snapshot that ``fleetd plan --observed`` reads back. The real CLI in a subprocess, on the fake backend."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fleetd.registry.facade import open_registry
from tests.cli.support import fleetd_env, run_fleetd
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
    text = fleet.run("status").stdout
    assert (
        "Health:   Degraded (1 replica unschedulable)\n  chat: 1 replica not placed — 1 node: insufficient VRAM\n"
        in text
    )
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


def registry_rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, to show that a command wrote nothing."""
    with sqlite3.connect(f"{database.as_uri()}?immutable=1", uri=True) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: sorted(conn.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in names}


def test_status_names_the_registry_it_read_and_warns_until_a_controller_wrote_it(fleet: Fleet) -> None:
    registry = f"sqlite:///{fleet.state / 'fleetd.db'}"
    fresh = fleet.run("status")
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.splitlines()[0] == f"Registry: {registry}"
    (warning,) = [line for line in fresh.stderr.splitlines() if line.startswith("warning:")]
    assert f"the registry {registry} has never been written by a controller" in warning
    assert "set FLEETD_STATE_DIR=/var/lib/fleetd, or pass --database-url" in warning
    assert fleet.status_json()["status"]["registry"] == registry
    assert fleet.run("apply", "--auto-approve").returncode == 0
    applied = fleet.run("status")
    assert applied.returncode == 0, applied.stderr
    assert "warning:" not in applied.stderr
    assert applied.stdout.startswith(f"Registry: {registry}\n")


def test_status_reads_a_read_only_registry_and_writes_nothing(fleet: Fleet) -> None:
    assert fleet.run("apply", "--auto-approve").returncode == 0
    database = fleet.state / "fleetd.db"
    before = registry_rows(database)
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    result = fleet.run("status", "--database-url", read_only)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Registry: {read_only}\n")
    assert "note: this user cannot write the registry; showing the fleet as a controller last recorded it" in (
        result.stderr
    )
    assert "warning:" not in result.stderr
    (row,) = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("chat ")]
    assert row[:4] == ["chat", "local", "0", "running"]
    assert "Sync:     Synced\n" in result.stdout
    assert registry_rows(database) == before, "status wrote to a read-only registry (a lease, a node, a replica)"


def test_status_reads_a_registry_this_user_may_not_write(fleet: Fleet) -> None:
    """The operator in the service's group: /var/lib/fleetd readable, not writable. Nothing may be created in it
    (no WAL shared memory), migrated or written."""
    assert fleet.run("apply", "--auto-approve").returncode == 0
    database = fleet.state / "fleetd.db"
    before = registry_rows(database)
    database.chmod(0o444)
    fleet.state.chmod(0o555)
    try:
        listing = sorted(p.name for p in fleet.state.iterdir())
        result = run_fleetd(["status"], env=fleetd_env(fleet.state), cwd=fleet.root, as_user=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "note: this user cannot write the registry" in result.stderr
        assert "Traceback" not in result.stderr
        (row,) = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("chat ")]
        assert row[:4] == ["chat", "local", "0", "running"]
        assert sorted(p.name for p in fleet.state.iterdir()) == listing
    finally:
        fleet.state.chmod(0o755)
        database.chmod(0o644)
    assert registry_rows(database) == before


def test_a_read_only_registry_behind_the_schema_says_how_to_upgrade(tmp_path: Path) -> None:
    from fleetd.registry.engine import open_engine
    from fleetd.registry.migrating import head_revision, upgrade

    database = tmp_path / "fleetd.db"
    engine = open_engine(f"sqlite:///{database}")
    upgrade(engine, "0007")
    engine.dispose()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetd",
            "status",
            "--database-url",
            f"sqlite:///file:{database}?mode=ro&uri=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: registry at sqlite:///file:{database}?mode=ro&uri=true: its schema is at revision 0007 and this "
        f"fleetd needs {head_revision()}; upgrade it with `fleetd db upgrade` as a user that can write it "
        "(e.g. the service's user)\n"
    )
    assert registry_rows(database)["alembic_version"] == [("0007",)]
