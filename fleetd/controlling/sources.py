"""Where the manifest comes from: a ``ManifestSource`` gives the manifest's files and their revision.

``PathSource`` reads files and directories on this machine (the revision is the git commit of their checkout,
``-dirty`` when they differ from it); a git remote source would be another implementation.
``ManifestTracker`` turns what a source reads into the desired state a cycle reconciles to, keeping the last
good one while the manifest is invalid (Argo CD keeps the last synced revision).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetd.core.desired import DesiredState
from fleetd.core.diagnostics import Diagnostic
from fleetd.manifest.loading import LoadedManifest, load_read_manifest
from fleetd.manifest.reading import ManifestFile, files_fingerprint, read_manifest_files
from fleetd.manifest.revision import Revision, manifest_revision

REVISION_TTL_S = 10.0
"""How long a looked-up git revision of unchanged files stands (a commit changes it without changing them)."""


@dataclass(frozen=True, slots=True)
class ManifestRead:
    """One reading of a source: the files (with the problems met reading them) and their revision."""

    files: tuple[ManifestFile, ...]
    problems: tuple[Diagnostic, ...]
    revision: Revision | None

    @property
    def fingerprint(self) -> str:
        """Digest of the files' names and bytes (and reading problems): the same value means nothing changed."""
        return files_fingerprint(self.files, self.problems)

    def load(self) -> LoadedManifest:
        return load_read_manifest(self.files, self.problems)


class ManifestSource(Protocol):
    """Gives the manifest's files and their revision, each time it is read."""

    @property
    def paths(self) -> tuple[str, ...]:
        """Where the manifest is, for people (file paths, or a remote's URL and path)."""
        ...

    def read(self) -> ManifestRead: ...


class PathSource:
    """Manifest files and directories on this machine. The git revision is looked up again when the files'
    bytes change, or after ``REVISION_TTL_S`` (two ``git`` calls are too slow for every cycle)."""

    def __init__(self, paths: Sequence[str | Path], *, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._paths = tuple(Path(p) for p in paths)
        self._clock_s = clock_s
        self._revision: tuple[str, float, Revision | None] | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self._paths)

    def read(self) -> ManifestRead:
        files, problems = read_manifest_files(self._paths)
        found = ManifestRead(tuple(files), tuple(problems), None)
        fingerprint, now = found.fingerprint, self._clock_s()
        cached = self._revision
        if cached is None or cached[0] != fingerprint or now - cached[1] > REVISION_TTL_S:
            cached = self._revision = (fingerprint, now, manifest_revision(self._paths) if files else None)
        return ManifestRead(found.files, found.problems, cached[2])


@dataclass(frozen=True, slots=True)
class Loaded:
    """The outcome of one reading for a cycle: the desired state in force (the last good one when this reading
    is invalid), its revision, and this reading's errors."""

    desired: DesiredState | None
    revision: Revision | None
    errors: tuple[str, ...]


class ManifestTracker:
    """The desired state a long-running controller reconciles to. Files whose bytes did not change since the
    last reading are not parsed again: the last outcome stands (a manifest of thousands of instances takes a
    large share of a second to validate), and the desired state stays the same value, so what the planner
    memoises per state carries over between cycles."""

    def __init__(self, source: ManifestSource) -> None:
        self.source = source
        self._fingerprint: str | None = None
        self._desired: DesiredState | None = None
        self._revision: Revision | None = None
        self._errors: tuple[str, ...] = ()

    @property
    def desired(self) -> DesiredState | None:
        """The last good desired state."""
        return self._desired

    def read(self) -> Loaded:
        found = self.source.read()
        fingerprint = found.fingerprint
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            loaded = found.load()
            if loaded.desired is not None:
                self._desired, self._errors = loaded.desired, ()
                self._revision = found.revision
            else:
                self._errors = tuple(
                    f"{d.location}: {d.message}" if d.location else d.message for d in loaded.errors
                ) or ("the manifest is invalid",)
        elif not self._errors:
            self._revision = found.revision  # a commit of unchanged files
        return Loaded(self._desired, self._revision, self._errors)
