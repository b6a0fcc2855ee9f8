"""``fleetd plan --observed`` as CI runs it: a real subprocess, the real planner, exit codes 0/1/2, --out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetd.planning.planfile import loads_plan
from fleetd.planning.plans import LoadDetails

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3

MANIFEST = """version: 1
backends:
  llama-cpp:
    type: llama_cpp
    install: {binary: /usr/local/bin/llama-server}
nodes:
  gpu-a:
    labels: {tier: fast}
    approved: true
instances:
  tiny:
    backend: llama-cpp
    model: /models/tiny.gguf
    vram: 1GiB
"""

NODE: dict[str, Any] = {
    "name": "gpu-a",
    "status": "healthy",
    "labels": {"tier": "fast"},
    "gpu_vendor": "nvidia",
    "total_vram": 80 * GIB,
    "available_vram": 80 * GIB,
    "backends": ["llama-cpp"],
}


def fleetd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def write_snapshot(path: Path, replicas: list[dict[str, Any]] | None = None) -> Path:
    path.write_text(json.dumps({"nodes": [NODE], "replicas": replicas or []}))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "fleet.yaml").write_text(MANIFEST)
    write_snapshot(tmp_path / "observed.json")
    return tmp_path


def test_changes_pending_exit_2_with_the_text_plan(workdir: Path) -> None:
    result = fleetd("plan", "--observed", "observed.json", cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Manifest: fleet.yaml (sha256:")
    assert "  + load tiny on gpu-a (replica 0): scale_up, vram 1GiB" in lines
    assert lines[-1] == "Plan: 1 to load, 0 to restart, 0 to unload."


def test_out_saves_the_plan_that_json_prints_and_it_loads_back(workdir: Path) -> None:
    result = fleetd(
        "plan", "fleet.yaml", "--observed", "observed.json", "--format", "json", "--out", "plan.json", cwd=workdir
    )
    assert result.returncode == 2, result.stderr
    saved_text = (workdir / "plan.json").read_text()
    assert result.stdout == saved_text
    assert result.stderr == "Saved the plan to plan.json.\n"
    saved = loads_plan(saved_text)
    assert saved.manifest_paths == ("fleet.yaml",)
    assert [a.id for a in saved.plan.actions] == ["load:tiny:gpu-a:0"]
    assert saved.plan.desired_digest.startswith("sha256:")
    assert saved.plan.observed_fingerprint.startswith("sha256:")
    assert json.loads(saved_text)["plan_hash"] == saved.plan.hash


def test_a_snapshot_built_from_the_plan_is_converged_exit_0(workdir: Path) -> None:
    assert fleetd("plan", "--observed", "observed.json", "--out", "plan.json", cwd=workdir).returncode == 2
    load = loads_plan((workdir / "plan.json").read_text()).plan.actions[0]
    replica = {
        "instance": load.instance,
        "node": load.node,
        "replica": load.replica,
        "state": "running",
        "config_hash": load.details_as(LoadDetails).config_hash,
        "vram_bytes": load.details_as(LoadDetails).vram_bytes,
    }
    write_snapshot(workdir / "converged.json", [replica])
    result = fleetd("plan", "--observed", "converged.json", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "No changes. The fleet matches the manifest."
    markdown = fleetd("plan", "--observed", "converged.json", "--format", "markdown", cwd=workdir)
    assert markdown.returncode == 0
    assert markdown.stdout.startswith("### fleetd plan\n\n**No changes. The fleet matches the manifest.**\n")


def test_markdown_format(workdir: Path) -> None:
    result = fleetd("plan", "--observed", "observed.json", "-f", "markdown", cwd=workdir)
    assert result.returncode == 2
    assert "```diff\n+ load tiny on gpu-a (replica 0): scale_up, vram 1GiB\n```" in result.stdout


def test_invalid_manifest_exits_1_with_its_diagnostics(workdir: Path) -> None:
    (workdir / "fleet.yaml").write_text(MANIFEST.replace("vram: 1GiB", "vram: 1GiB\n    colour: blue"))
    result = fleetd("plan", "--observed", "observed.json", cwd=workdir)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "fleet.yaml:15:5: error: instances.tiny.colour" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("fleet.yaml: invalid (1 error")


def test_bad_snapshot_exits_1_naming_the_file_and_the_json_path(workdir: Path) -> None:
    bad = dict(NODE, total_vram="80GiB")
    (workdir / "bad.json").write_text(json.dumps({"nodes": [bad]}))
    result = fleetd("plan", "--observed", "bad.json", cwd=workdir)
    assert result.returncode == 1
    assert (
        result.stderr
        == 'error: observed snapshot bad.json: nodes[0].total_vram: expected an integer, got "80GiB"\n'
    )
    assert result.stdout == ""


def test_missing_snapshot_exits_1(workdir: Path) -> None:
    result = fleetd("plan", "--observed", "nowhere.json", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr == "error: cannot read the observed snapshot nowhere.json: No such file or directory\n"


def test_a_plan_that_empties_the_fleet_is_refused_unless_allowed(workdir: Path) -> None:
    (workdir / "fleet.yaml").write_text(MANIFEST.split("instances:", maxsplit=1)[0] + "instances: {}\n")
    write_snapshot(
        workdir / "observed.json", [{"instance": "old", "node": "gpu-a", "replica": 0, "state": "running"}]
    )
    refused = fleetd("plan", "--observed", "observed.json", "--out", "plan.json", cwd=workdir)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: plan refused: ")
    assert "--allow-empty" in refused.stderr
    assert refused.stdout == ""
    assert not (workdir / "plan.json").exists()
    allowed = fleetd("plan", "--observed", "observed.json", "--allow-empty", cwd=workdir)
    assert allowed.returncode == 2, allowed.stderr
    assert "  - unload old on gpu-a (replica 0): removed" in allowed.stdout.splitlines()


def test_revision_is_recorded(workdir: Path) -> None:
    result = fleetd(
        "plan", "--observed", "observed.json", "--format", "json", "--revision", "3f2c1a9", cwd=workdir
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)["manifest"]["revision"] == "3f2c1a9"


def test_usage_error_is_not_mistaken_for_changes_pending(workdir: Path) -> None:
    result = fleetd("plan", "--observed", "observed.json", "--format", "yaml", cwd=workdir)
    assert result.returncode == 1


def test_without_observed_it_plans_against_the_registry(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'registry.db'}"
    result = fleetd("plan", "--database-url", url, cwd=workdir)
    assert result.returncode == 2, result.stderr  # an empty registry: no node can take anything, not "done"
    assert "  tiny: 1 replica not placed — no nodes" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == (
        "No changes, but the fleet does not match the manifest: 1 replica cannot be placed (see Unschedulable)."
    )
