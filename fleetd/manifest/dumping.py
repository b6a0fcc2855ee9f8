"""A manifest model -> YAML text, in canonical units ("5s", "6GiB"), leaving out what equals its default.

Loading the dump gives the same manifest (a property test holds us to it), so ``fleetd`` can show the
merged manifest of a directory, and tools can rewrite manifests without changing their meaning.
"""

from __future__ import annotations

from typing import Any

import yaml

from fleetd.manifest.models import Manifest

MODELINE = "# yaml-language-server: $schema=https://fleetd.dev/schemas/fleet.schema.json\n"


def manifest_data(manifest: Manifest) -> dict[str, Any]:
    data: dict[str, Any] = manifest.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data = {"version": manifest.version, **data}
    if manifest.nodes is not None:
        data["nodes"] = manifest.model_dump(
            mode="json", exclude_defaults=True, exclude_none=True, include={"nodes"}
        ).get("nodes", {})
    return data


def dump_manifest(manifest: Manifest, *, modeline: str | None = None) -> str:
    body = yaml.safe_dump(manifest_data(manifest), sort_keys=False, allow_unicode=True, width=120)
    return (modeline or "") + body
