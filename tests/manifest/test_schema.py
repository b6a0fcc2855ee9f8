"""The committed JSON Schema is current, and accepts what fleetd accepts where a schema can tell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from fleetd.manifest.schema import manifest_schema, schema_text

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas" / "fleet.schema.json"
VALID_FILES = [ROOT / "examples" / "fleet.yaml", *sorted((ROOT / "tests/manifest/corpus/valid").glob("*.yaml"))]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == schema_text(), "regenerate: fleetd schema > " + str(COMMITTED)


def test_example_starts_with_the_modeline() -> None:
    first = (ROOT / "examples" / "fleet.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/fleet.schema.json"


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: p.name)
def test_valid_manifests_pass_the_schema(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def _instance(**fields: Any) -> dict[str, Any]:
    return {"version": 1, "instances": {"x": {"backend": "b", "model": "/m.gguf", **fields}}}


@pytest.mark.parametrize(
    "document",
    [
        {"version": 2},
        {"version": 1, "extra": True},
        {"version": 1, "instances": {"Bad Name": {"backend": "b", "model": "m"}}},
        _instance(restart_delay="5 minutes"),
        _instance(vram="lots"),
        _instance(scheduling={"min_replica": 1}),
        _instance(placement="random"),
        _instance(options={"ctx_size": [1, 2]}),
    ],
    ids=["version", "top-level-key", "name", "duration", "size", "nested-key", "enum", "option-list"],
)
def test_schema_rejects_what_the_loader_rejects(
    document: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    assert list(validator.iter_errors(document)), document
