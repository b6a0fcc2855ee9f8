"""``fleetd validate``, ``schema`` and ``inspect`` as an operator's CI runs them: real subprocesses, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fleet.yaml"

INVALID = """version: 1
backends:
  b: {type: llama_cpp, install: {binary: /usr/bin/llama-server}}
instances:
  x:
    backend: b
    model: /m.gguf
    scheduling: {min_replicas: 4, max_replicas: 2}
    environment: {API_KEY: "100% clear"}
"""


def fleetd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetd", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(INVALID)
    return path


def test_valid_example_exits_0() -> None:
    result = fleetd("validate", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("valid (0 errors, 0 warnings)")


def test_invalid_manifest_exits_1_with_location_and_source_excerpt(invalid: Path) -> None:
    result = fleetd("validate", str(invalid))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{invalid}:8:32: error: instances.x.scheduling.min_replicas: 4 is greater than max_replicas 2" in lines
    assert " 8 |     scheduling: {min_replicas: 4, max_replicas: 2}" in lines
    assert "   |                                ^" in lines
    assert lines[-1] == f"{invalid}: invalid (1 error, 1 warning)"


def test_json_format(invalid: Path) -> None:
    result = fleetd("validate", "--format", "json", str(invalid))
    assert result.returncode == 1
    payload = json.loads(result.stdout)
    assert set(payload) == {"valid", "error_count", "warning_count", "diagnostics"}
    assert (payload["valid"], payload["error_count"], payload["warning_count"]) == (False, 1, 1)
    error = payload["diagnostics"][0]
    assert error == {
        "severity": "error",
        "path": "instances.x.scheduling.min_replicas",
        "file": str(invalid),
        "line": 8,
        "column": 32,
        "message": "4 is greater than max_replicas 2",
    }
    assert payload["diagnostics"][1]["severity"] == "warning"
    assert payload["diagnostics"][1]["path"] == "instances.x.environment.API_KEY"


def test_github_format_prints_the_full_list_then_escaped_annotations(invalid: Path) -> None:
    invalid.write_text(
        INVALID.replace("min_replicas: 4", "min_replicas: 4, bogus%: 1").replace("model: /m.gguf", "model: [1]")
    )
    result = fleetd("validate", "--format", "github", str(invalid))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    plain = [line for line in lines if not line.startswith("::")]
    assert len(annotations) == 2  # one per diagnostic (schema errors; semantic checks wait for a valid schema)
    assert plain[-1] == f"{invalid}: invalid (2 errors, 0 warnings)"
    assert plain[0] == f"{invalid}:7:12: error: instances.x.model: expected a string, got a list"
    assert "unknown field 'bogus%'" in plain[1]
    file_prop = str(invalid).replace(":", "%3A").replace(",", "%2C")
    assert annotations[1].startswith(f"::error file={file_prop},line=8,col=35,title=fleetd validate::")
    assert "bogus%25" in annotations[1]  # '%' escaped as GitHub requires


def test_strict_turns_warnings_into_failure(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(INVALID.replace("min_replicas: 4, max_replicas: 2", "min_replicas: 1"))
    assert fleetd("validate", str(path)).returncode == 0
    strict = fleetd("validate", "--strict", str(path))
    assert strict.returncode == 1
    assert "invalid (0 errors, 1 warning)" in strict.stdout


def test_usage_error_exits_1_not_2() -> None:
    result = fleetd("validate", "--no-such-flag")
    assert result.returncode == 1
    assert "No such option" in result.stderr


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    result = fleetd("validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 1
    assert "no such file or directory" in result.stdout


def test_default_path_is_fleet_yaml_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("version: 1\n")
    result = fleetd("validate", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("fleet.yaml: valid")


def test_schema_check_detects_a_stale_copy(tmp_path: Path) -> None:
    assert fleetd("schema", "--check", str(ROOT / "schemas" / "fleet.schema.json")).returncode == 0
    stale = tmp_path / "schema.json"
    stale.write_text("{}\n")
    result = fleetd("schema", "--check", str(stale))
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_schema_check_of_a_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "fleet.schema.json"
    result = fleetd("schema", "--check", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"error: {missing} does not exist; create it with: fleetd schema > {missing}\n"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("fleet.yaml", None),  # missing, but a manifest's name
        ("fleet.yaml", "version: 1\ninstances: {}\n"),
        ("fleet.yml", "version: 1\n"),
        ("fleet.json", '{"version": 1, "backends": {}, "instances": {}}\n'),
    ],
)
def test_schema_check_never_suggests_overwriting_a_manifest(tmp_path: Path, name: str, text: str | None) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = fleetd("schema", "--check", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path} looks like a manifest, not a copy of the schema")
    assert "fleetd schema >" not in result.stderr
    assert text is None or path.read_text() == text


def test_inspect_shows_resolved_state_and_never_a_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_super_secret_value")
    text = fleetd("inspect", str(EXAMPLE))
    assert text.returncode == 0, text.stderr
    assert "replicas 0..1" in text.stdout  # phi-mac: on-demand
    as_json = fleetd("inspect", "--format", "json", str(EXAMPLE))
    payload = json.loads(as_json.stdout)
    assert payload["manifest"]["digest"].startswith("sha256:")
    llama = next(i for i in payload["desired"]["instances"] if i["name"] == "llama-8b")
    assert llama["environment"] == {"HF_TOKEN": {"template": "${env:HF_TOKEN}", "secret": True}}
    as_yaml = fleetd("inspect", "--format", "yaml", str(EXAMPLE))
    for output in (text.stdout, as_json.stdout, as_yaml.stdout):
        assert "hf_super_secret_value" not in output


def test_inspect_json_and_yaml_are_the_same_resolved_state_with_maps_as_objects() -> None:
    as_json = fleetd("inspect", "--format", "json", str(EXAMPLE))
    as_yaml = fleetd("inspect", "--format", "yaml", str(EXAMPLE))
    assert as_json.returncode == as_yaml.returncode == 0, as_json.stderr + as_yaml.stderr
    document = json.loads(as_json.stdout)
    assert yaml.safe_load(as_yaml.stdout) == document, "yaml shows the resolved state, as json does"
    llama = next(i for i in document["desired"]["instances"] if i["name"] == "llama-8b")
    assert llama["options"] == {
        "enable_prefix_caching": True,
        "gpu_memory_utilization": 0.85,
        "max_model_len": 16384,
    }
    assert llama["restart"]["restart_delay_ms"] == 5000, "defaults are merged in"
    gpu_a = next(n for n in document["desired"]["nodes"] if n["name"] == "gpu-a")
    assert gpu_a["labels"] == {"tier": "fast", "zone": "eu-1"}


def test_inspect_refuses_an_invalid_manifest(invalid: Path) -> None:
    result = fleetd("inspect", str(invalid))
    assert result.returncode == 1
    assert "4 is greater than max_replicas 2" in result.stderr
    assert result.stdout == ""
