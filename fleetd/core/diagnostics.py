"""Diagnostics: what ``fleetd validate`` (and later ``plan``) reports about a manifest.

A diagnostic carries the dotted field path and, where the value came from a file, the file, line and column
(1-based, as editors count). Renderers in the CLI turn them into text, JSON or GitHub annotations.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
FieldPath = tuple[PathPart, ...]


class Severity(enum.StrEnum):
    """An error makes a manifest invalid; a warning does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, order=True)
class SourceLocation:
    """A position in a manifest file, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a manifest: severity, field path, location and a message a person can act on."""

    severity: Severity
    message: str
    path: FieldPath = ()
    location: SourceLocation | None = None

    @property
    def dotted_path(self) -> str:
        """``instances.qwen.scheduling.nodes[0]``: the path as a person reads it."""
        return dotted(self.path)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str, str]:
        loc = self.location
        if loc is None:
            return ("", 0, 0, self.dotted_path, self.message)
        return (loc.file, loc.line, loc.column, self.dotted_path, self.message)


def dotted(path: Sequence[PathPart]) -> str:
    """Join a field path: ``("instances", "qwen", "nodes", 0)`` -> ``instances.qwen.nodes[0]``.

    Keys that hold dots or other punctuation are quoted: ``nodes.gpu-a.labels["gpu.vendor"]``.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> tuple[Diagnostic, ...]:
    """File, line and column order, with duplicates removed (two checks may find the same fault)."""
    unique = dict.fromkeys(diagnostics)
    return tuple(sorted(unique, key=Diagnostic.sort_key))


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)
