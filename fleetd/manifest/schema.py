"""The manifest's JSON Schema, generated from the pydantic models (``fleetd schema``).

Committed at ``schemas/fleet.schema.json`` so editors with the YAML language server validate and complete
``fleet.yaml`` as it is typed; a test fails when the committed copy falls behind the models. ``check_schema_file``
says how a copy compares (``fleetd schema --check``), and tells a manifest given by mistake apart, so that no one
is told to overwrite their ``fleet.yaml`` with the schema.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetd.manifest.models import Manifest

SCHEMA_ID = "https://fleetd.dev/schemas/fleet.schema.json"


def manifest_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    _close_pattern_maps(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "fleetd manifest (fleet.yaml), version 1",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def _close_pattern_maps(node: Any) -> None:
    """Names must match the name rule: a map keyed by pattern allows no other key."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_pattern_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_maps(value)


MANIFEST_KEYS = frozenset({"version", "defaults", "backends", "nodes", "instances"})
MANIFEST_SUFFIXES = (".yaml", ".yml")


class SchemaFileState(enum.Enum):
    UP_TO_DATE = "up to date"
    OUT_OF_DATE = "out of date"
    MISSING = "missing"
    MANIFEST = "a manifest"
    """A ``.yaml`` / ``.yml`` file, or one whose top-level keys are a manifest's: not the schema's copy."""
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class SchemaFile:
    state: SchemaFileState
    reason: str = ""
    """Why it could not be read (``UNREADABLE``)."""


def check_schema_file(path: Path) -> SchemaFile:
    """How ``path`` compares with the schema these models generate."""
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return SchemaFile(SchemaFileState.MANIFEST)
    if not path.exists():
        return SchemaFile(SchemaFileState.MISSING)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return SchemaFile(SchemaFileState.UNREADABLE, f"it is not UTF-8 (byte 0x{exc.object[exc.start]:02x})")
    except OSError as exc:
        return SchemaFile(SchemaFileState.UNREADABLE, exc.strerror or str(exc))
    if text == schema_text():
        return SchemaFile(SchemaFileState.UP_TO_DATE)
    return SchemaFile(SchemaFileState.MANIFEST if _looks_like_manifest(text) else SchemaFileState.OUT_OF_DATE)


def _looks_like_manifest(text: str) -> bool:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and "$schema" not in data and bool(MANIFEST_KEYS & set(data) - {"version"})
