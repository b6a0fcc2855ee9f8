"""Manifest paths -> file texts: directory expansion, the size cap, UTF-8 decoding.

A manifest is one file or a directory of ``*.yaml``/``*.yml`` files (not recursive, dotfiles skipped, read in
name order). Input is capped (5 MiB per manifest) so that a wrong path or a generated monster is refused
with a clear message instead of exhausting memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetd.core.diagnostics import Diagnostic, Severity, SourceLocation

MAX_MANIFEST_BYTES = 5 * 1024 * 1024
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One file's text, the name diagnostics use for it, and the digest of its bytes."""

    name: str
    text: str
    sha256: str


def read_manifest_files(paths: Sequence[str | Path]) -> tuple[list[ManifestFile], list[Diagnostic]]:
    """Expand directories, enforce the size cap and decode. Unreadable inputs become diagnostics."""
    files: list[ManifestFile] = []
    diagnostics: list[Diagnostic] = []
    total = 0
    for candidate in _expand(paths, diagnostics):
        name = str(candidate)
        try:
            size = candidate.stat().st_size
            if total + size > MAX_MANIFEST_BYTES:
                diagnostics.append(
                    _error(
                        name,
                        f"the manifest is larger than the {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB limit "
                        f"({total + size:,} bytes); is this the right file?",
                    )
                )
                continue
            with candidate.open("rb") as handle:
                raw = handle.read(MAX_MANIFEST_BYTES + 1 - total)
        except OSError as exc:
            diagnostics.append(_error(name, f"cannot read the file: {exc.strerror or exc}"))
            continue
        if total + len(raw) > MAX_MANIFEST_BYTES:  # it grew while we looked
            diagnostics.append(
                _error(
                    name,
                    f"the manifest is larger than the {MAX_MANIFEST_BYTES // (1024 * 1024)} "
                    "MiB limit; is this the right file?",
                )
            )
            continue
        total += len(raw)
        text, problem = _decode(raw, name)
        if problem is not None:
            diagnostics.append(problem)
            continue
        files.append(ManifestFile(name, text, "sha256:" + hashlib.sha256(raw).hexdigest()))
    return files, diagnostics


def files_fingerprint(files: Sequence[ManifestFile], diagnostics: Sequence[Diagnostic]) -> str:
    """A digest of what reading found (each file's name and bytes, and each read error): equal fingerprints,
    equal manifests, so a daemon can skip parsing a manifest that did not change."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.sha256}\0".encode())
    for d in diagnostics:
        h.update(f"{d.message}\0".encode())
    return h.hexdigest()


def _expand(paths: Sequence[str | Path], diagnostics: list[Diagnostic]) -> list[Path]:
    found: list[Path] = []
    if not paths:
        diagnostics.append(Diagnostic(Severity.ERROR, "no manifest path given"))
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            members = sorted(
                p
                for p in path.iterdir()
                if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
            if not members:
                diagnostics.append(_error(str(path), "the directory holds no *.yaml or *.yml file"))
            found.extend(members)
        elif path.exists():
            found.append(path)
        else:
            diagnostics.append(_error(str(path), "no such file or directory"))
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _decode(raw: bytes, name: str) -> tuple[str, Diagnostic | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return "", Diagnostic(
            Severity.ERROR,
            f"the file is not UTF-8 (byte 0x{raw[exc.start]:02x})",
            (),
            SourceLocation(name, line, column),
        )
    if "\x00" in text:
        return "", _error(name, "the file contains NUL bytes; is it a binary file?")
    return text, None


def _error(name: str, message: str) -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, (), SourceLocation(name, 1, 1))
