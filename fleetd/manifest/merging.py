"""Several manifest files -> one manifest, and an index that finds which file defined a field path.

Files merge by name within ``backends``, ``nodes`` and ``instances``; a name defined in two files is an error
naming both places, and so is a second ``defaults`` section. Merging works on validated per-file models and
never re-validates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetd.core.diagnostics import Diagnostic, FieldPath, Severity, SourceLocation
from fleetd.manifest.models import Manifest
from fleetd.manifest.yaml_source import ParsedYaml, SourceMap

NAMED_SECTIONS = ("backends", "nodes", "instances")
_SINGULAR = {"backends": "backend", "nodes": "node", "instances": "instance"}


@dataclass(frozen=True, slots=True)
class SourceIndex:
    """Locates a field path of the merged manifest in the file that defined it."""

    maps: tuple[SourceMap, ...]
    owners: dict[FieldPath, int]

    def locate(self, path: FieldPath, *, at_key: bool = False) -> SourceLocation:
        owner = self.owners.get(path[:2], self.owners.get(path[:1], 0))
        if not self.maps:
            return SourceLocation("<manifest>", 1, 1)
        return self.maps[owner].locate(path, at_key=at_key)


def index_sources(parsed: Sequence[ParsedYaml]) -> SourceIndex:
    owners: dict[FieldPath, int] = {}
    for i, doc in enumerate(parsed):
        if not isinstance(doc.data, dict):
            continue
        for key, value in doc.data.items():
            owners.setdefault((key,), i)
            if key in NAMED_SECTIONS and isinstance(value, dict):
                for name in value:
                    owners.setdefault((key, name), i)
    return SourceIndex(tuple(p.source for p in parsed), owners)


def duplicate_definitions(parsed: Sequence[ParsedYaml]) -> list[Diagnostic]:
    """Names defined in more than one file, and ``defaults`` given twice."""
    diagnostics: list[Diagnostic] = []
    first: dict[FieldPath, SourceLocation] = {}
    for doc in parsed:
        if not isinstance(doc.data, dict):
            continue
        for section, value in doc.data.items():
            keys: list[FieldPath]
            if section in NAMED_SECTIONS and isinstance(value, dict):
                keys = [(section, name) for name in value]
            elif section == "defaults":
                keys = [(section,)]
            else:
                continue
            for key in keys:
                here = doc.source.locate(key, at_key=True)
                if key in first:
                    what = f"{_SINGULAR[section]} {key[1]!r}" if len(key) == 2 else "the defaults section"
                    diagnostics.append(
                        Diagnostic(Severity.ERROR, f"{what} is defined twice: also at {first[key]}", key, here)
                    )
                else:
                    first[key] = here
    return diagnostics


def merge_manifests(manifests: Sequence[Manifest]) -> Manifest:
    """Union of the files' sections (names are unique across files: checked before)."""
    if len(manifests) == 1:
        return manifests[0]
    backends: dict[str, Any] = {}
    instances: dict[str, Any] = {}
    nodes: dict[str, Any] | None = None
    defaults = None
    for manifest in manifests:
        backends.update(manifest.backends)
        instances.update(manifest.instances)
        if manifest.nodes is not None:
            nodes = {**(nodes or {}), **manifest.nodes}
        defaults = defaults or manifest.defaults
    return Manifest.model_construct(
        version=1, defaults=defaults, backends=backends, nodes=nodes, instances=instances
    )
