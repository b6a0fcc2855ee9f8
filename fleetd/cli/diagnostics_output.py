"""Render manifest diagnostics for people (text with the source line), machines (JSON) and GitHub Actions.

GitHub shows at most 10 annotations per step, so the ``github`` format prints the full list as plain lines
for the log first, then the annotations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fleetd.core.diagnostics import Diagnostic, Severity


def render_text(diagnostics: Sequence[Diagnostic], sources: Mapping[str, str], summary: str) -> str:
    lines: list[str] = []
    for d in diagnostics:
        lines.append(_headline(d))
        excerpt = _excerpt(d, sources)
        if excerpt:
            lines.extend(excerpt)
    lines.append(summary)
    return "\n".join(lines) + "\n"


def render_json(diagnostics: Sequence[Diagnostic], valid: bool) -> str:
    payload: dict[str, Any] = {
        "valid": valid,
        "error_count": sum(d.severity is Severity.ERROR for d in diagnostics),
        "warning_count": sum(d.severity is Severity.WARNING for d in diagnostics),
        "diagnostics": [
            {
                "severity": d.severity.value,
                "path": d.dotted_path,
                "file": d.location.file if d.location else None,
                "line": d.location.line if d.location else None,
                "column": d.location.column if d.location else None,
                "message": d.message,
            }
            for d in diagnostics
        ],
    }
    return json.dumps(payload, indent=2) + "\n"


def render_github(diagnostics: Sequence[Diagnostic], summary: str) -> str:
    lines = [_headline(d) for d in diagnostics]
    lines.append(summary)
    for d in diagnostics:
        props = []
        if d.location is not None:
            props = [
                f"file={_escape_property(d.location.file)}",
                f"line={d.location.line}",
                f"col={d.location.column}",
            ]
        props.append(f"title={_escape_property('fleetd validate')}")
        message = f"{d.dotted_path}: {d.message}" if d.path else d.message
        lines.append(f"::{d.severity.value} {','.join(props)}::{_escape_data(message)}")
    return "\n".join(lines) + "\n"


def _headline(d: Diagnostic) -> str:
    where = f"{d.location}: " if d.location else ""
    path = f"{d.dotted_path}: " if d.path else ""
    return f"{where}{d.severity.value}: {path}{d.message}"


def _excerpt(d: Diagnostic, sources: Mapping[str, str]) -> list[str]:
    if d.location is None or d.location.file not in sources:
        return []
    lines = sources[d.location.file].splitlines()
    if not 0 < d.location.line <= len(lines):
        return []
    text = lines[d.location.line - 1].replace("\t", " ")
    number = str(d.location.line)
    gutter = " " * len(number)
    return [f" {number} | {text}", f" {gutter} | {' ' * (d.location.column - 1)}^"]


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
