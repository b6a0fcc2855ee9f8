"""A manifest model -> YAML text, in canonical units ("5s", "6GiB"), leaving out what equals its default.

Loading the dump gives the same manifest (a property test holds us to it), so ``fleetd`` can show the
merged manifest of a directory, and tools can rewrite manifests without changing their meaning.
"""

from __future__ import annotations

from typing import Any

import yaml

from fleetd.manifest.models import Manifest

_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


class _ManifestDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes a string holding NEL, LS or PS double-quoted, where they are escaped.

    With ``allow_unicode`` PyYAML writes these characters raw, inside a plain or single-quoted scalar, and YAML
    reads them back as line breaks (folded into a space): the value would change on the way back.
    """


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if any(ch in value for ch in _YAML_LINE_BREAKS):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_ManifestDumper.add_representer(str, _represent_str)


def manifest_data(manifest: Manifest) -> dict[str, Any]:
    data: dict[str, Any] = manifest.model_dump(mode="json", exclude_defaults=True, exclude_none=True)
    data = {"version": manifest.version, **data}
    if manifest.nodes is not None:
        data["nodes"] = manifest.model_dump(
            mode="json", exclude_defaults=True, exclude_none=True, include={"nodes"}
        ).get("nodes", {})
    return data


def dump_manifest(manifest: Manifest, *, modeline: str | None = None) -> str:
    body: str = yaml.dump(
        manifest_data(manifest), Dumper=_ManifestDumper, sort_keys=False, allow_unicode=True, width=120
    )
    return (modeline or "") + body
