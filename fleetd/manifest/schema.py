"""The manifest's JSON Schema, generated from the pydantic models (``fleetd schema``).

Committed at ``schemas/fleet.schema.json`` so editors with the YAML language server validate and complete
``fleet.yaml`` as it is typed; a test fails when the committed copy falls behind the models.
"""

from __future__ import annotations

import json
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
