"""``load_manifest(paths)``: the whole manifest pipeline, collecting every diagnostic on the way.

Each stage runs as far as the previous one allows: YAML errors of one file do not hide the schema errors of
another; semantic checks run once every file passes the schema (they need the merged manifest). The result
says whether the manifest is valid and, when it is, carries the ``DesiredState``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fleetd.core.desired import DesiredState
from fleetd.core.diagnostics import Diagnostic, Severity, has_errors, sorted_diagnostics
from fleetd.manifest.anchoring import anchor_model_paths
from fleetd.manifest.merging import duplicate_definitions, index_sources, merge_manifests
from fleetd.manifest.models import Manifest
from fleetd.manifest.reading import ManifestFile, read_manifest_files
from fleetd.manifest.resolving import resolve
from fleetd.manifest.schema_errors import schema_diagnostics
from fleetd.manifest.semantics import check_semantics
from fleetd.manifest.yaml_source import ParsedYaml, parse_yaml


@dataclass(frozen=True, slots=True)
class LoadedManifest:
    """What loading found: the files read, every diagnostic, and (when valid) the merged manifest and state."""

    files: tuple[ManifestFile, ...]
    diagnostics: tuple[Diagnostic, ...]
    manifest: Manifest | None = None
    desired: DesiredState | None = None

    @property
    def valid(self) -> bool:
        return self.desired is not None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)


def load_manifest(paths: Sequence[str | Path]) -> LoadedManifest:
    """Read, parse, validate, merge, check and resolve the manifest at ``paths`` (files or directories)."""
    files, diagnostics = read_manifest_files(paths)
    with _cyclic_gc_paused():
        return _load(files, diagnostics, on_disk=True)


def load_read_manifest(files: Sequence[ManifestFile], diagnostics: Sequence[Diagnostic]) -> LoadedManifest:
    """``load_manifest`` on files already read (``read_manifest_files``), for a caller that looked at them first."""
    with _cyclic_gc_paused():
        return _load(list(files), list(diagnostics), on_disk=True)


def load_manifest_text(text: str, name: str = "fleet.yaml") -> LoadedManifest:
    """Load a manifest held in memory (tests, and plans that carry their manifest)."""
    with _cyclic_gc_paused():
        return _load([ManifestFile(name, text, "")], [], on_disk=False)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a manifest loads.

    Loading allocates a node tree, plain data, positions and models: tens of thousands of long-lived objects
    for a large manifest, freed by reference counting as usual (they form no cycles). The collector still
    runs every 700 allocations and its older generations rescan the growing tree; on 1,000 instances that was
    more than half of the load time (bench/validate.py). Collection resumes afterwards (any cycles made
    meanwhile are collected then), and a collector that was off stays off. Threads that load at once leave it
    as they found it: only a caller that saw it enabled disables it, and enables it again.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(files: list[ManifestFile], diagnostics: list[Diagnostic], *, on_disk: bool) -> LoadedManifest:
    """``on_disk``: the files' names are their paths, so relative model paths anchor at their directories."""
    parsed: list[ParsedYaml] = []
    directories: list[Path | None] = []
    for file in files:
        doc, problems = parse_yaml(file.text, file.name)
        diagnostics.extend(problems)
        if doc is not None:
            parsed.append(doc)
            directories.append(Path(file.name).parent if on_disk else None)
    diagnostics.extend(duplicate_definitions(parsed))
    models: list[Manifest] = []
    for doc, directory in zip(parsed, directories, strict=True):
        if not isinstance(doc.data, dict):
            diagnostics.append(
                Diagnostic(
                    Severity.ERROR,
                    "a manifest is a mapping of sections (version, backends, instances, ...)",
                    (),
                    doc.source.locate(()),
                )
            )
            continue
        try:
            model = Manifest.model_validate(doc.data)
            models.append(model if directory is None else anchor_model_paths(model, directory))
        except ValidationError as exc:
            diagnostics.extend(schema_diagnostics(exc, doc.source))
    manifest = desired = None
    if not has_errors(diagnostics) and models:
        manifest = merge_manifests(models)
        diagnostics.extend(check_semantics(manifest, index_sources(parsed)))
        if not has_errors(diagnostics):
            desired = resolve(manifest)
    return LoadedManifest(tuple(files), sorted_diagnostics(diagnostics), manifest if desired else None, desired)
